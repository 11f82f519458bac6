"""`golden prepare` (backbone_ssl.data.golden) and its datasets (golden_datasets)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone_ssl.cli import main
from backbone_ssl.data import golden
from backbone_ssl.data.golden import prepare, summary_line
from backbone_ssl.data.golden_datasets import PanelSequences, PersonPanels, face_crops
from backbone_ssl.data.golden_faces import face_area, face_box_in_panel, panel_area
from backbone_ssl.data.golden_format import panel_key
from backbone_ssl.data.signed import to_signed
from backbone_ssl.data.toy_comics import write_toy_comics
from backbone_ssl.errors import UserError
from backbone_ssl.io import open_rgb

# ---------------------------------------------------------------------------------------------
# A hand-made COMICS set with every kind of bad input


def _panel(path: Path, w: int, h: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)


def _face(rel: str, x1=10, y1=10, x2=50, y2=50, conf=0.99) -> str:
    return f"{rel} {x1} {y1} {x2} {y2} {conf}"


def make_bad_set(root: Path) -> tuple[Path, Path]:
    """Books 7 (clean, numeric sort + page roll-over), 8 (every bad kind), 9 (empty
    annotations), 3 (annotations, no panels). Panels are 100 x 80."""
    panels, ann = root / "raw_panel_images", root / "face_annotations"
    ann.mkdir(parents=True)
    names7 = ["0_0", "0_1", "0_9", "0_10", "1_0", "1_1"]
    for i, n in enumerate(names7):
        _panel(panels / "7" / f"{n}.jpg", 100, 80, i)
    lines7 = [_face(f"7/{n}.jpg") for n in names7] + [_face("7/1_1.jpg", 55, 20, 95, 60, 0.95)]
    (ann / "7.txt").write_text("\n".join(reversed(lines7)) + "\n")  # file order is irrelevant

    for i, n in enumerate(["0_0", "0_1", "0_2", "0_3", "0_4", "0_6"]):
        _panel(panels / "8" / f"{n}.jpg", 100, 80, 10 + i)
    data = (panels / "8" / "0_1.jpg").read_bytes()
    (panels / "8" / "0_1.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (panels / "8" / "notes.txt").write_text("not a panel")
    lines8 = [
        _face("8/0_0.jpg"),
        _face("8/0_0.jpg"),  # duplicate
        "8/0_0.jpg 1 2 3",  # wrong field count
        "8/0_2.jpg a b c d 0.9",  # not numeric
        "8/0_2.jpg 50 50 10 90 0.99",  # reversed
        _face("8/0_1.jpg"),  # truncated panel
        _face("8/0_2.jpg"),
        _face("8/0_2.jpg", 500, 500, 560, 560),  # wholly outside
        _face("8/0_3.jpg", -10, 10, 40, 60),  # partly outside: clipped, kept
        _face("8/0_4.jpg"),
        _face("8/0_5.jpg"),  # missing panel file
        _face("8/0_6.jpg"),
        _face("8/0_4.jpg", 60, 10, 95, 45, 0.6),  # low confidence
        _face("8/0_4.jpg", 60, 50, 70, 60),  # small face
        _face("8/page.jpg"),  # bad panel name
        "",
    ]
    (ann / "8.txt").write_text("\n".join(lines8) + "\n")

    _panel(panels / "9" / "0_0.jpg", 90, 120, 30)
    _panel(panels / "9" / "0_1.jpg", 90, 120, 31)
    (ann / "9.txt").write_text("")
    (ann / "3.txt").write_text(_face("3/0_0.jpg") + "\n")
    (root / "no_person_frames.txt").write_text("9/0_0.jpg\ngarbage\n99/0_0.jpg\n")
    return panels, ann


@pytest.fixture()
def bad_set(tmp_path: Path) -> tuple[Path, Path]:
    return make_bad_set(tmp_path / "in")


def test_bad_input_is_counted_per_reason(bad_set, tmp_path):
    panels, ann = bad_set
    stats = prepare(panels, ann, tmp_path / "out")
    skipped = stats["boxes"]["skipped"]
    assert skipped == {
        "bad_field_count": 1, "not_numeric": 1, "bad_panel_name": 1, "duplicate": 1,
        "reversed": 1, "missing_panel": 2, "unreadable_panel": 1, "outside_panel": 1,
        "low_conf": 1, "small_face": 1,
    }  # missing_panel: 8/0_5 and 3/0_0
    assert stats["boxes"]["lines"] == 7 + 15 + 1
    assert stats["boxes"]["kept"] == 7 + 5 == stats["faces"]
    assert stats["boxes"]["lines"] == stats["boxes"]["kept"] + sum(skipped.values())
    assert stats["boxes"]["clipped"] == 1
    assert stats["panels"]["missing"] == 2 and stats["panels"]["unreadable"] == 1
    assert stats["panels"]["unrecognised_files"] == 1
    assert stats["panels"]["decoded_or_sized"] == 6 + 5 + 2
    assert stats["panels"]["size_median"] == [100.0, 80.0]
    assert stats["panels"]["aspect_mean"] == pytest.approx((11 * 1.25 + 2 * 0.75) / 13, abs=1e-4)
    assert stats["books"] == {"total": 4, "processed": 4, "resumed": 0, "empty": 1,
                              "without_annotations": 0, "without_panels": 1}
    assert stats["no_person_frames"] == {"lines": 3, "bad_lines": 1, "unknown_book": 1}
    assert stats["labels"] == {"person": 11, "no_person": 1, "conflicts": 0}
    # book 7: 4 windows + 1 for the second face of 1_1; book 8: only [0_2, 0_3, 0_4]
    assert stats["sequences"] == 5 + 1
    assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
    line = summary_line(stats)
    assert "\n" not in line and "12/23 face boxes kept" in line and "missing=2" in line
    assert "unreadable=1" in line and "reversed=1" in line


def test_sequences_windows_and_areas(bad_set, tmp_path):
    panels, ann = bad_set
    out = tmp_path / "out"
    prepare(panels, ann, out)
    seqs = json.loads((out / "sequences.json").read_text())
    assert list(seqs) == [str(i) for i in range(6)]
    frames = [tuple(v[0]) for v in seqs.values()]
    assert frames[:3] == [("7/0_0.jpg", "7/0_1.jpg", "7/0_9.jpg"),
                          ("7/0_1.jpg", "7/0_9.jpg", "7/0_10.jpg"),
                          ("7/0_9.jpg", "7/0_10.jpg", "7/1_0.jpg")]  # numeric sort, roll-over
    assert frames[4] == ("7/0_10.jpg", "7/1_0.jpg", "7/1_1.jpg")
    assert frames[3] == frames[4]  # two kept faces in 7/1_1: one entry each
    lasts = {tuple(seqs["3"][1][-1][1]), tuple(seqs["4"][1][-1][1])}
    assert lasts == {(10, 10, 50, 50), (55, 20, 95, 60)}
    assert seqs["3"][1][-1][1] == [10, 10, 50, 50]  # most confident first
    assert frames[5] == ("8/0_2.jpg", "8/0_3.jpg", "8/0_4.jpg")
    # the clipped box [-10,10,40,60] -> [0,10,40,60] -> square side 50 inside the panel
    assert seqs["5"][1][1][1] == [0, 10, 50, 60]
    for frames_, areas in seqs.values():
        assert len(areas) == len(frames_) == 3
        for (pa, fa) in areas:
            assert pa in ([10, 0, 90, 80], [0, 0, 80, 80], [15, 0, 95, 80])  # 100 x 80 panels
            assert fa[2] - fa[0] == fa[3] - fa[1]
            assert pa[0] <= fa[0] and pa[1] <= fa[1] and fa[2] <= pa[2] and fa[3] <= pa[3]


def test_panels_flag_accepts_the_parent_folder(bad_set, tmp_path):
    panels, ann = bad_set
    prepare(panels, ann, tmp_path / "a")
    prepare(panels.parent, ann, tmp_path / "b")  # the folder holding raw_panel_images/
    assert (tmp_path / "a" / "sequences.json").read_bytes() == (
        tmp_path / "b" / "sequences.json").read_bytes()
    record = json.loads((tmp_path / "b" / "prepare.json").read_text())
    assert record["panels"] == str(panels.resolve()) and record["args"]["window"] == 3
    assert record["no_person_frames"] == str((panels.parent / "no_person_frames.txt").resolve())


def test_face_crops_match_kept_faces(bad_set, tmp_path):
    panels, ann = bad_set
    out = tmp_path / "out"
    stats = prepare(panels, ann, out, face_size=40)
    crops = sorted(p.relative_to(out / "faces").as_posix() for p in (out / "faces").rglob("*.jpg"))
    assert len(crops) == stats["boxes"]["kept"] == 12
    assert "7/1_1_0.jpg" in crops and "7/1_1_1.jpg" in crops and "8/0_3_0.jpg" in crops
    for c in crops:
        with Image.open(out / "faces" / c) as im:
            assert im.size == (40, 40)
    # the crop is the face area of the panel, resized
    ref = open_rgb(panels / "7" / "1_1.jpg").crop((55, 20, 95, 60)).resize((40, 40))
    got = open_rgb(out / "faces" / "7" / "1_1_1.jpg")
    diff = np.abs(np.asarray(ref, np.float32) - np.asarray(got, np.float32)).mean()
    assert diff < 25  # same region (noise panels; JPEG + resampling differences only)
    other = open_rgb(out / "faces" / "7" / "1_1_0.jpg")
    assert np.abs(np.asarray(ref, np.float32) - np.asarray(other, np.float32)).mean() > 2 * diff
    labels = (out / "person_labels.csv").read_text().splitlines()
    assert labels[0] == "panel,has_person" and "9/0_0.jpg,0" in labels and "8/0_0.jpg,1" in labels
    assert len(labels) == 1 + 12
    face_ds = face_crops(out)
    assert len(face_ds) == 12 and face_ds.classes == ["7", "8"]


def test_nothing_usable_exits_2(tmp_path, capsys):
    panels, ann = tmp_path / "p", tmp_path / "a"
    _panel(panels / "1" / "0_0.jpg", 60, 60, 0)
    ann.mkdir()
    (ann / "1.txt").write_text("1/0_0.jpg 40 40 10 10 0.99\n1/0_0.jpg x\n1/0_1.jpg 1 1 50 50 1\n")
    rc = main(["golden", "prepare", "--panels", str(panels), "--annotations", str(ann),
               "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing usable" in err[0] and "0 of 3 face boxes" in err[0]
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["boxes"]["skipped"]["reversed"] == 1
    assert main(["golden", "prepare", "--panels", str(tmp_path / "nope"), "--annotations",
                 str(ann), "--out", str(tmp_path / "o2")]) == 2


def test_rerun_skips_finished_books_and_survives_a_crash(bad_set, tmp_path, monkeypatch):
    panels, ann = bad_set
    out = tmp_path / "out"
    real = golden.process_book

    def crash_on_9(job):
        if job.book == "9":
            raise KeyboardInterrupt  # a kill half-way
        return real(job)

    monkeypatch.setattr(golden, "process_book", crash_on_9)
    with pytest.raises(KeyboardInterrupt):
        prepare(panels, ann, out)
    assert sorted(p.stem for p in (out / "books").glob("*.json")) == ["3", "7", "8"]
    monkeypatch.setattr(golden, "process_book", real)
    marker = out / "books" / "7.json"
    crop = out / "faces" / "7" / "0_0_0.jpg"
    before = (marker.stat().st_mtime_ns, crop.stat().st_mtime_ns)
    stats = prepare(panels, ann, out)
    assert stats["books"]["resumed"] == 3 and stats["books"]["processed"] == 1
    assert (marker.stat().st_mtime_ns, crop.stat().st_mtime_ns) == before
    prepare(panels, ann, tmp_path / "fresh")
    for name in ("sequences.json", "person_labels.csv"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    again = prepare(panels, ann, out)
    assert again["books"]["resumed"] == 4 and again["sequences"] == stats["sequences"]
    # a changed annotation file or argument redoes the book
    with open(ann / "7.txt", "a") as f:
        f.write(_face("7/0_0.jpg", 20, 20, 60, 60, 0.91) + "\n")
    os.utime(ann / "7.txt", ns=(1, 1))
    changed = prepare(panels, ann, out)
    assert changed["books"]["processed"] == 1 and changed["boxes"]["kept"] == 13
    assert prepare(panels, ann, out, window=2)["books"]["processed"] == 4


# ---------------------------------------------------------------------------------------------
# The toy comics pipeline


@pytest.fixture(scope="module")
def toy_prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("golden")
    write_toy_comics(root / "toy", books=4, pages=6, seed=1)
    stats = prepare(root / "toy" / "raw_panel_images", root / "toy" / "face_annotations",
                    root / "prep")
    return root / "toy", root / "prep", stats


def test_toy_sequences_satisfy_the_contract(toy_prepared):
    toy, out, stats = toy_prepared
    seqs = json.loads((out / "sequences.json").read_text())
    assert len(seqs) == stats["sequences"] > 20
    kept = {}
    for crop in (out / "faces").rglob("*.jpg"):
        book = crop.parent.name
        page, panel, _ = crop.stem.split("_")
        kept.setdefault(f"{book}/{page}_{panel}.jpg", 0)
        kept[f"{book}/{page}_{panel}.jpg"] += 1
    assert sum(kept.values()) == stats["boxes"]["kept"]
    order = {b.name: sorted((p.name for p in b.iterdir()), key=panel_key)
             for b in (toy / "raw_panel_images").iterdir()}
    per_last: dict[tuple, int] = {}
    for frames, areas in seqs.values():
        book = frames[0].split("/")[0]
        assert all(f.split("/")[0] == book for f in frames)
        names = [f.split("/")[1] for f in frames]
        i = order[book].index(names[0])
        assert order[book][i:i + 3] == names  # consecutive, no gap
        assert all(f in kept for f in frames)  # every panel has a kept face
        per_last[tuple(frames)] = per_last.get(tuple(frames), 0) + 1
        for f, (pa, fa) in zip(frames, areas):
            with Image.open(toy / "raw_panel_images" / f) as im:
                w, h = im.size
            assert fa[2] - fa[0] == fa[3] - fa[1] > 0
            assert pa[2] - pa[0] == pa[3] - pa[1] == min(w, h)
            assert 0 <= pa[0] <= fa[0] and 0 <= pa[1] <= fa[1]
            assert fa[2] <= pa[2] <= w and fa[3] <= pa[3] <= h
    assert all(n == kept[f[-1]] for f, n in per_last.items())  # one entry per kept face


def test_workers_2_and_reruns_are_identical(toy_prepared, tmp_path):
    toy, out, _ = toy_prepared
    prepare(toy / "raw_panel_images", toy / "face_annotations", tmp_path / "w2", workers=2)
    for name in ("sequences.json", "person_labels.csv"):
        assert (out / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()
    a = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "faces").rglob("*.jpg")}
    b = {p.relative_to(tmp_path / "w2").as_posix(): p.read_bytes()
         for p in (tmp_path / "w2" / "faces").rglob("*.jpg")}
    assert a == b and len(a) > 50


@pytest.mark.parametrize("seed", range(5))
def test_face_and_panel_area_geometry(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(20, 300, 2))
        x1, y1 = rng.uniform(0, w - 1), rng.uniform(0, h - 1)
        x2, y2 = rng.uniform(x1 + 0.5, w), rng.uniform(y1 + 0.5, h)
        fa = face_area((x1, y1, x2, y2), w, h)
        side = fa[2] - fa[0]
        assert side == fa[3] - fa[1] >= 1
        assert side == min(int(np.ceil(max(x2 - x1, y2 - y1) - 1e-6)), w, h)
        assert 0 <= fa[0] and 0 <= fa[1] and fa[2] <= w and fa[3] <= h
        pa = panel_area(fa, w, h)
        assert pa[2] - pa[0] == pa[3] - pa[1] == min(w, h)
        assert 0 <= pa[0] <= fa[0] and 0 <= pa[1] <= fa[1] and fa[2] <= pa[2] <= w
        assert fa[3] <= pa[3] <= h


def test_panel_sequences_items(toy_prepared):
    _, out, stats = toy_prepared
    train = PanelSequences(out, split="train", panel_size=96, mask_value=1.0)
    test = PanelSequences(out, split="test", panel_size=96, mask_value=1.0)
    assert len(train) + len(test) == stats["sequences"]
    assert set(train.books()).isdisjoint(test.books()) and test.books()
    seqs = json.loads((out / "sequences.json").read_text())
    for i in (0, len(train) - 1):
        item = train[i]
        assert set(item) == {"panels", "face", "mask", "box", "index"} and item["index"] == i
        assert item["panels"].shape == (3, 3, 96, 96) and item["face"].shape == (3, 64, 64)
        assert item["mask"].shape == (96, 96) and item["box"].dtype == torch.long
        for t in (item["panels"], item["face"]):
            assert t.dtype == torch.float32 and t.min() >= -1 and t.max() <= 1
        x1, y1, x2, y2 = item["box"].tolist()
        assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 96
        assert item["mask"].sum() == (x2 - x1) * (y2 - y1)
        assert item["mask"][y1:y2, x1:x2].min() == 1
        assert (item["panels"][-1][:, item["mask"].bool()] == 1.0).all()
        assert (item["panels"][0] != 1.0).any()
        # the target face is the face crop that prepare wrote for that face
        frames, areas = train.entries[i]
        entry = next(v for v in seqs.values() if v == [frames, areas])
        stem = frames[-1].split("/")[1][:-4]
        crops = sorted((out / "faces" / frames[-1].split("/")[0]).glob(f"{stem}_*.jpg"))
        best = min(
            (torch.from_numpy(np.asarray(open_rgb(c), np.float32) / 127.5 - 1).permute(2, 0, 1)
             - item["face"]).abs().mean().item() for c in crops)
        assert best < 0.06 and entry[1][-1][1] == areas[-1][1]
    plain = PanelSequences(out, split="all", return_mask=False)
    assert len(plain) == stats["sequences"] and "mask" not in plain[0]
    assert plain[0]["panels"].shape == (3, 3, 128, 128)


def test_person_panels_and_missing_panel(toy_prepared, tmp_path):
    toy, out, stats = toy_prepared
    train, test = PersonPanels(out, "train", image_size=48), PersonPanels(out, "test",
                                                                          image_size=48)
    assert len(train) + len(test) == stats["labels"]["person"] + stats["labels"]["no_person"]
    assert set(train.books()).isdisjoint(test.books())
    img, label = train[0]
    assert img.shape == (3, 48, 48) and label in (0, 1)
    assert train.class_counts() == [train.labels.count(0), train.labels.count(1)]
    assert min(train.class_counts()) > 0
    with pytest.raises(UserError, match="split"):
        PersonPanels(out, "val")
    with pytest.raises(UserError, match="not a `golden prepare` output"):
        PanelSequences(toy)
    # a panel file that disappears after prepare: its sequences are dropped and counted
    import shutil

    copy = tmp_path / "panels"
    shutil.copytree(toy / "raw_panel_images", copy)
    prep = tmp_path / "prep"
    prepare(copy, toy / "face_annotations", prep)
    victim = json.loads((prep / "sequences.json").read_text())["0"][0][1]
    (copy / victim).unlink()
    ds = PanelSequences(prep, split="all")
    assert ds.skipped["missing"] >= 1 and len(ds) == stats["sequences"] - ds.skipped["missing"]
    assert all(victim not in e[0] for e in ds.entries)


@pytest.mark.slow
def test_pretrain_byol_on_faces(toy_prepared, tmp_path):
    _, out, _ = toy_prepared
    run = tmp_path / "run"
    rc = main(["pretrain", "byol", "--data", str(out / "faces"), "--out", str(run),
               "trainer.max_steps=2", "trainer.enable_progress_bar=false",
               "data.num_workers=0", "model.arch=resnet10t", "data.image_size=32",
               "data.batch_size=8"])
    assert rc == 0
    assert (run / "encoder" / "model.safetensors").is_file()
    meta = json.loads((run / "encoder" / "config.json").read_text())["backbone_ssl"]
    assert meta["steps"] == 2 and meta["method"] == "byol"


def _red_face_panel(w: int, h: int, face: list[int]) -> Image.Image:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste((255, 0, 0), tuple(face))
    return img


@pytest.mark.parametrize("size", [32, (40, 24)])
def test_face_box_in_a_non_square_panel_area(size):
    """A 120 x 60 panel area squashed to a square (or resized to 40 x 24): the box must still
    cover the face, which needs one scale per axis."""
    pa, fa = [10, 5, 130, 65], [70, 25, 100, 55]  # face in panel pixels
    panel = _red_face_panel(140, 70, fa)
    out_w, out_h = (size, size) if isinstance(size, int) else size
    box = face_box_in_panel(pa, fa, size)
    img = np.asarray(panel.crop(pa).resize((out_w, out_h), Image.Resampling.NEAREST))
    red = (img[..., 0] > 200) & (img[..., 1] < 60)
    expected = np.zeros_like(red)
    expected[box[1]:box[3], box[0]:box[2]] = True
    # every red pixel is inside the box, and the box is no more than a pixel larger than them
    assert red.any() and not (red & ~expected).any()
    ys, xs = np.nonzero(red)
    assert box[0] >= xs.min() - 1 and box[2] <= xs.max() + 2
    assert box[1] >= ys.min() - 1 and box[3] <= ys.max() + 2


def test_panel_sequences_mask_the_face_of_a_non_square_panel_area(tmp_path):
    panels = tmp_path / "raw_panel_images"
    (panels / "1").mkdir(parents=True)
    pa, fa = [0, 0, 120, 60], [60, 20, 90, 50]
    _red_face_panel(120, 60, fa).save(panels / "1" / "0_0.jpg", format="PNG")  # lossless
    prep = tmp_path / "prep"
    prep.mkdir()
    (prep / "prepare.json").write_text(json.dumps({"version": 1, "panels": str(panels)}))
    (prep / "sequences.json").write_text(json.dumps({"0": [["1/0_0.jpg"], [[pa, fa]]]}))
    item = PanelSequences(prep, "all", panel_size=32, mask_value=-1.0)[0]
    assert item["box"].tolist() == face_box_in_panel(pa, fa, 32) == [16, 10, 24, 27]
    unmasked = to_signed(Image.open(panels / "1" / "0_0.jpg").convert("RGB"), 32)
    red = (unmasked[0] > 0.6) & (unmasked[1] < -0.6)
    assert red.any() and not (red & ~item["mask"].bool()).any()  # the whole face is masked
