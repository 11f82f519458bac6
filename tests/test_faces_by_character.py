"""Golden faces by character: golden's crops filed by ground-truth character, split by panel."""

from __future__ import annotations

import json
from pathlib import Path

from backbone_ssl.data.faces_by_character import MIN_PER_SPLIT, SPLITS
from backbone_ssl.data.golden import prepare
from backbone_ssl.data.toy_comics import write_toy_comics


def _tree(root: Path) -> dict[str, dict[str, set[str]]]:
    return {s: {c.name: {f.name for f in c.iterdir()} for c in (root / s).iterdir()}
            for s in SPLITS}


def test_prepare_on_toy_comics_files_golden_crops_by_character(tmp_path):
    comics, prep = tmp_path / "comics", tmp_path / "prep"
    write_toy_comics(comics, books=3, pages=3, seed=1)
    stats = prepare(comics / "raw_panel_images", comics / "face_annotations", prep)
    root = prep / "faces_by_character"
    tree = _tree(root)
    summary = json.loads((root / "faces_by_character.json").read_text())
    assert stats["faces_by_character"] == summary["counts"]
    chars = set(tree["train"])
    assert chars and all(set(tree[s]) == chars for s in SPLITS)  # closed set
    panels = {s: {f.rsplit("_", 1)[0] for c in tree[s].values() for f in c} for s in SPLITS}
    assert panels["train"].isdisjoint(panels["val"] | panels["test"])  # split by panel
    assert panels["val"].isdisjoint(panels["test"])
    for s in SPLITS:
        assert all(len(v) >= MIN_PER_SPLIT[s] for v in tree[s].values())
        assert summary["counts"][s]["images"] == sum(len(v) for v in tree[s].values())
    truth = json.loads((comics / "ground_truth.json").read_text())["boxes"]
    # every filed crop is byte-identical to golden's crop, and its character is in that panel
    for s in SPLITS:
        for char, names in tree[s].items():
            ident = int(char.split("_")[1])
            for n in names:
                book, page, panel, k = n.rsplit(".", 1)[0].split("_")
                src = prep / "faces" / book / f"{page}_{panel}_{k}.jpg"
                assert (root / s / char / n).read_bytes() == src.read_bytes()
                assert ident in [row[5] for row in truth[f"{book}/{page}_{panel}.jpg"]]
    # a panel with one kept face: that crop is the character of its most confident true box
    assert set(summary["dropped_characters"]).isdisjoint(chars)
