"""The toy COMICS generator (backbone_ssl.data.toy_comics) and its CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image

from backbone_ssl.cli import main
from backbone_ssl.data.golden import prepare
from backbone_ssl.data.golden_format import panel_key
from backbone_ssl.data.toy_comics import MAX_CAST, write_toy_comics
from backbone_ssl.errors import UserError


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("comics")
    assert main(["toy", "comics", "--out", str(out)]) == 0
    return out, json.loads((out / "toy_comics.json").read_text())


def test_layout_and_detector_noise(default_set):
    out, summary = default_set
    counts = summary["counts"]
    books = sorted(p.name for p in (out / "raw_panel_images").iterdir())
    assert books == [str(i) for i in range(6)] and counts["books"] == 6
    panels = sorted((out / "raw_panel_images").rglob("*.jpg"))
    assert len(panels) == counts["panels"] >= 6 * 8 * 4
    sizes = set()
    for p in panels[::7]:
        with Image.open(p) as im:
            assert im.format == "JPEG" and 120 <= min(im.size) and max(im.size) <= 320
            sizes.add(round(im.width / im.height, 1))
    assert len(sizes) >= 5  # varied aspect ratios
    lines = [ln.split() for b in books
             for ln in (out / "face_annotations" / f"{b}.txt").read_text().splitlines()]
    assert len(lines) == counts["boxes"] and all(len(ln) == 6 for ln in lines)
    confs = [float(ln[5]) for ln in lines]
    assert 0.5 <= min(confs) < 0.6 and max(confs) > 0.99
    assert sum(c < 0.9 for c in confs) > 0.1 * len(confs)
    sides = [max(int(ln[3]) - int(ln[1]), int(ln[4]) - int(ln[2])) for ln in lines]
    assert sum(s < 32 for s in sides) == counts["small_boxes"] > 10
    assert any(int(ln[1]) < 0 or int(ln[2]) < 0 for ln in lines)  # crossing the edge
    assert counts["edge_boxes"] > 10
    truth = json.loads((out / "ground_truth.json").read_text())["boxes"]
    idents = [b[5] for boxes in truth.values() for b in boxes]
    assert len(idents) == len(lines) and idents.count(-1) == counts["false_positives"] > 0
    no_person = (out / "no_person_frames.txt").read_text().split()
    assert len(no_person) == counts["no_person_panels"] > 10
    for rel in no_person:
        assert (out / "raw_panel_images" / rel).is_file()
        assert all(b[5] == -1 for b in truth.get(rel, []))


def test_characters_recur_across_consecutive_panels(default_set):
    out, _ = default_set
    truth = json.loads((out / "ground_truth.json").read_text())["boxes"]
    shared = total = 0
    for book in (out / "raw_panel_images").iterdir():
        order = sorted((p.name for p in book.iterdir()), key=panel_key)
        ids = [{b[5] for b in truth.get(f"{book.name}/{n}", []) if b[5] >= 0} for n in order]
        for a, b in itertools.pairwise(ids):
            total += 1
            shared += bool(a & b)
        assert all(i // MAX_CAST == int(book.name) for s in ids for i in s)  # the book's cast
    assert shared > 0.5 * total


def test_defaults_give_enough_sequences(default_set, tmp_path):
    out, _ = default_set
    stats = prepare(out / "raw_panel_images", out / "face_annotations", tmp_path / "prep")
    assert stats["sequences"] > 100
    assert stats["labels"]["no_person"] > 10 and stats["labels"]["person"] > 100
    assert stats["boxes"]["skipped"]["low_conf"] > 0 and stats["boxes"]["skipped"]["small_face"] > 0


def test_same_seed_same_bytes(tmp_path):
    write_toy_comics(tmp_path / "a", books=2, pages=2, seed=4)
    write_toy_comics(tmp_path / "b", books=2, pages=2, seed=4)
    summary = write_toy_comics(tmp_path / "c", books=2, pages=2, seed=5)
    a, b, c = (_all_bytes(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 10
    assert a != c
    assert summary["books"] == 2 and summary["pages"] == 4 and summary["root"] == str(
        tmp_path / "c")
    write_toy_comics(tmp_path / "a", books=1, pages=1, seed=4)  # rewrite clears the old books
    assert sorted(p.name for p in (tmp_path / "a" / "raw_panel_images").iterdir()) == ["0"]


def test_refuses_foreign_folder_and_bad_args(tmp_path, capsys):
    (tmp_path / "raw_panel_images").mkdir()
    with pytest.raises(UserError, match="not written by"):
        write_toy_comics(tmp_path, books=1, pages=1)
    assert main(["toy", "comics", "--out", str(tmp_path / "x"), "--books", "0"]) == 2
    assert "--books" in capsys.readouterr().err
