"""Tests for the embedded toy face data (backbone_ssl.data.toy)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backbone_ssl.data.toy import (
    SUMMARY_NAME,
    FaceTraits,
    raw_pixel_nn1,
    render_face,
    sample_traits,
    write_toy_faces,
)
from backbone_ssl.errors import UserError

TRAIN = "personai_icartoonface_rectrain/icartoonface_rectrain"
TEST = "personai_icartoonface_rectest/icartoonface_rectest"
INFO = "personai_icartoonface_rectest/icartoonface_rectest_info.txt"


def _files(root: Path) -> dict[str, set[str]]:
    """identity folder -> set of image file names."""
    return {d.name: {f.name for f in d.iterdir()} for d in sorted(root.iterdir()) if d.is_dir()}


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("toy")
    summary = write_toy_faces(out, identities=6, per_identity=5, size=32, seed=3)
    return out, summary


def test_layout_counts_and_split(small_set: tuple[Path, dict]) -> None:
    out, summary = small_set
    train = _files(out / TRAIN)
    assert sorted(train) == [f"id_{i:04d}" for i in range(6)]
    assert all(len(v) == 5 for v in train.values())
    for ident, names in train.items():
        assert all(n.startswith(ident + "_") and n.endswith(".jpg") for n in names)

    s_train, s_test = _files(out / "split/train"), _files(out / "split/test")
    s_val = _files(out / "split/val")
    assert set(s_train) == set(s_val) == set(s_test) == set(train)
    for ident in train:
        assert s_train[ident].isdisjoint(s_test[ident])
        assert s_val[ident].isdisjoint(s_test[ident] | s_train[ident])
        assert s_train[ident] | s_val[ident] | s_test[ident] == train[ident]
        # round(0.25 * 5) = 1 each to test and val, the rest to train
        assert len(s_test[ident]) == 1 and len(s_val[ident]) == 1 and len(s_train[ident]) == 3
        name = next(iter(s_test[ident]))
        assert (out / "split/test" / ident / name).read_bytes() == (
            out / TRAIN / ident / name
        ).read_bytes()
        assert not (out / "split/test" / ident / name).is_symlink()

    counts = summary["counts"]
    assert counts["train_images"] == 30
    assert counts["split_train_images"] == 18 and counts["split_test_images"] == 6
    assert counts["split_val_images"] == 6
    assert counts["test_identities"] == 5 and counts["distractors"] == 20
    on_disk = json.loads((out / SUMMARY_NAME).read_text())
    assert on_disk["seed"] == 3 and on_disk["size"] == 32
    assert on_disk["args"]["per_identity"] == 5
    assert summary["root"] == str(out)
    assert Path(summary["paths"]["split_train"]) == out / "split/train"

    with Image.open(out / TRAIN / "id_0000" / "id_0000_000.jpg") as im:
        assert im.size == (32, 32) and im.mode == "RGB" and im.format == "JPEG"


def test_rectest_info_file(small_set: tuple[Path, dict]) -> None:
    out, summary = small_set
    lines = [ln.split() for ln in (out / INFO).read_text().splitlines() if ln.strip()]
    six = [ln for ln in lines if len(ln) == 6]
    two = [ln for ln in lines if len(ln) == 2]
    assert len(six) + len(two) == len(lines)
    first_pair = next(i for i, ln in enumerate(lines) if len(ln) == 2)
    assert all(len(ln) == 6 for ln in lines[:first_pair]) and all(
        len(ln) == 2 for ln in lines[first_pair:]
    )

    files = sorted(p.name for p in (out / TEST).iterdir())
    assert sorted(ln[0] for ln in six) == files
    labels: dict[str, int] = {}
    for name, *nums in six:
        x1, y1, x2, y2, label = (int(v) for v in nums)
        with Image.open(out / TEST / name) as im:
            w, h = im.size
        assert w > 32 or h > 32  # a scene larger than the face
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert (x2 - x1, y2 - y1) == (32, 32)
        labels[name] = label
    values = list(labels.values())
    assert values.count(-1) == summary["counts"]["distractors"] == 20
    probe_labels = {v for v in values if v != -1}
    assert len(probe_labels) == 5
    assert all(v >= 6 for v in probe_labels)  # fresh identities, disjoint from train ids 0..5
    for v in probe_labels:
        assert 2 <= values.count(v) <= 4

    assert len(two) == summary["counts"]["pairs"] == sum(values.count(v) - 1 for v in probe_labels)
    for probe, mate in two:
        assert probe != mate
        assert labels[probe] == labels[mate] != -1
    probes = {p for p, _ in two}
    assert len(probes) == 5  # one probe per test identity


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    kw = {"identities": 3, "per_identity": 3, "size": 24, "test_identities": 2, "distractors": 2}
    write_toy_faces(tmp_path / "a", seed=11, **kw)
    write_toy_faces(tmp_path / "b", seed=11, **kw)
    write_toy_faces(tmp_path / "c", seed=12, **kw)
    a, b, c = (_all_bytes(tmp_path / n) for n in "abc")
    assert len(a) > 10
    assert a == b
    train = [k for k in a if k.startswith(TRAIN)]
    assert len(train) == 9 and set(train) <= set(c)  # same identities and names...
    assert all(a[k] != c[k] for k in train)  # ...but every image differs
    assert a[INFO] != c[INFO]


def test_rewrite_into_same_folder(tmp_path: Path) -> None:
    write_toy_faces(
        tmp_path, identities=4, per_identity=3, size=16, test_identities=1, distractors=1
    )
    write_toy_faces(
        tmp_path, identities=2, per_identity=3, size=16, test_identities=1, distractors=1
    )
    assert sorted(_files(tmp_path / TRAIN)) == ["id_0000", "id_0001"]  # stale identities removed


def test_refuses_foreign_folder_and_bad_args(tmp_path: Path) -> None:
    (tmp_path / "split").mkdir()
    with pytest.raises(UserError, match="not written by"):
        write_toy_faces(tmp_path, identities=2, per_identity=3, size=16)
    with pytest.raises(UserError, match="per_identity"):  # train, val and test need one each
        write_toy_faces(tmp_path / "x", identities=2, per_identity=2)
    with pytest.raises(UserError, match="split_val_fraction"):
        write_toy_faces(tmp_path / "z", identities=2, per_identity=4, split_val_fraction=0.8)
    with pytest.raises(UserError, match="split_test_fraction"):
        write_toy_faces(tmp_path / "y", identities=2, per_identity=4, split_test_fraction=1.0)


def test_sample_traits_deterministic_and_varied() -> None:
    a = sample_traits(np.random.default_rng(5))
    assert a == sample_traits(np.random.default_rng(5))
    assert isinstance(a, FaceTraits)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hair_style = "bald"  # type: ignore[misc]
    many = [sample_traits(np.random.default_rng(i)) for i in range(60)]
    assert len(set(many)) == 60
    assert len({t.hair_style for t in many}) >= 8
    assert len({t.head_shape for t in many}) >= 4
    assert len({t.eye_style for t in many}) >= 5
    assert any(t.glasses != "none" for t in many) and any(t.hat != "none" for t in many)


def test_render_face_rgb_and_nuisance() -> None:
    traits = sample_traits(np.random.default_rng(0))
    img = render_face(traits, np.random.default_rng(1), 48)
    assert img.mode == "RGB" and img.size == (48, 48)
    same = render_face(traits, np.random.default_rng(1), 48)
    other = render_face(traits, np.random.default_rng(2), 48)
    assert np.array_equal(np.asarray(img), np.asarray(same))
    assert not np.array_equal(np.asarray(img), np.asarray(other))
    clean1 = render_face(traits, np.random.default_rng(1), 48, nuisance=False)
    clean2 = render_face(traits, np.random.default_rng(2), 48, nuisance=False)
    assert np.array_equal(np.asarray(clean1), np.asarray(clean2))  # canonical view ignores rng


@pytest.mark.parametrize("nuisance", [False, True])
def test_render_face_rgba_transparent_outside(nuisance: bool) -> None:
    for seed in range(4):
        traits = sample_traits(np.random.default_rng(seed))
        img = render_face(
            traits, np.random.default_rng(100 + seed), 64, nuisance=nuisance, background=False
        )
        assert img.mode == "RGBA" and img.size == (64, 64)
        alpha = np.asarray(img.getchannel("A"))
        for y, x in ((0, 0), (0, 63), (63, 0), (63, 63)):
            assert alpha[y, x] == 0
        assert alpha[30:34, 30:34].min() == 255
        assert 0.15 < (alpha > 128).mean() < 0.9


def _write_canonical(root: Path, n_ids: int) -> None:
    for i in range(n_ids):
        traits = sample_traits(np.random.default_rng(i))
        d = root / f"id_{i}"
        d.mkdir(parents=True)
        render_face(traits, np.random.default_rng(0), 32, nuisance=False).save(d / "a.png")


def test_raw_pixel_nn1_exact_copies_score_one(tmp_path: Path) -> None:
    _write_canonical(tmp_path / "train", 5)
    _write_canonical(tmp_path / "test", 5)
    assert raw_pixel_nn1(tmp_path / "train", tmp_path / "test", size=16) == 1.0


def test_raw_pixel_nn1_is_a_weak_but_better_than_chance_baseline(tmp_path: Path) -> None:
    s = write_toy_faces(
        tmp_path, identities=8, per_identity=12, size=32, seed=0, test_identities=1, distractors=1
    )
    acc = raw_pixel_nn1(s["paths"]["split_train"], s["paths"]["split_test"])
    assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    assert acc > 1.0 / 8  # better than chance
    assert acc < 0.8  # nuisance keeps raw pixels far from solving it
