"""Golden faces by character: the crops ``golden prepare`` cut from toy comics, filed by who they
are (``ground_truth.json``), as a labelled train / val / test evaluation set.

Layout under ``PREP_OUT/faces_by_character/``::

    train/<character>/<book>_<page>_<panel>_<k>.jpg     (also val/, test/)
    faces_by_character.json                             counts, split rule, dropped characters

The crops are the very files ``golden prepare`` wrote in ``faces/`` (byte copies): cut from the
detector-noisy boxes by golden's own code, so tight, noisy and panel-sized. Which crop is which
character is recovered by re-running golden's face filter (``keep_faces``, the same order that
numbers the crops ``k``) on the ground-truth boxes. False positives (identity -1) are left out.

Split by panel: every panel goes whole to train, val or test (fractions ``SPLIT``, drawn with
``seed`` per panel), so the three splits share no image; the same character appears in all three
(closed set). A character with fewer than ``MIN_PER_SPLIT`` faces in any split is dropped from all
of them and named in the summary.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backbone_ssl.data.golden_faces import clip_box, keep_faces
from backbone_ssl.data.golden_format import FACES_DIR, PrepareArgs, read_prepare_record
from backbone_ssl.errors import UserError
from backbone_ssl.io import write_json_atomic

OUT_DIR = "faces_by_character"
SUMMARY = "faces_by_character.json"
GROUND_TRUTH = "ground_truth.json"
SPLITS = ("train", "val", "test")
#: Fractions of panels going to train, val, test.
SPLIT = (0.6, 0.2, 0.2)
#: Faces a character needs in each split to be kept (train: gallery; val/test: queries).
MIN_PER_SPLIT = {"train": 2, "val": 1, "test": 1}


def find_ground_truth(panels_root: str | Path) -> Path | None:
    """``ground_truth.json`` beside ``raw_panel_images`` (a toy comics folder), else ``None``."""
    path = Path(panels_root).parent / GROUND_TRUTH
    return path if path.is_file() else None


def _split_of(panel: str, seed: int) -> str:
    """Deterministic train/val/test draw for one panel (``book/page_panel.jpg``)."""
    u = np.random.default_rng([seed, zlib.crc32(panel.encode())]).random()
    return "train" if u < SPLIT[0] else "val" if u < SPLIT[0] + SPLIT[1] else "test"


def character_name(identity: int) -> str:
    return f"char_{int(identity):04d}"


def write_faces_by_character(prep_out: str | Path, ground_truth: str | Path | None = None,
                             seed: int = 0) -> dict[str, Any]:
    """File the crops of ``prep_out`` (a ``golden prepare`` output of toy comics) by character.

    Returns (and writes) the summary: ``counts`` per split (images, characters),
    ``dropped_characters``, ``false_positives``, ``split``, ``seed``, ``paths``.
    """
    prep_out = Path(prep_out)
    record, panels_root = read_prepare_record(prep_out)
    gt_path = Path(ground_truth) if ground_truth else find_ground_truth(panels_root)
    if gt_path is None or not gt_path.is_file():
        raise UserError(f"faces by character need toy comics' {GROUND_TRUTH} beside "
                        f"{panels_root}; none found")
    truth = json.loads(gt_path.read_text())["boxes"]
    args = PrepareArgs(**record["args"])
    out = prep_out / OUT_DIR
    if out.exists():
        if not (out / SUMMARY).is_file():
            raise UserError(f"{out} exists and was not written by faces_by_character; move it")
        shutil.rmtree(out)
    files: dict[str, dict[str, list[tuple[Path, str]]]] = {s: {} for s in SPLITS}
    false_pos = 0
    for panel in sorted(truth):
        book, name = panel.split("/", 1)
        try:
            with Image.open(panels_root / panel) as im:
                w, h = im.size
        except (OSError, ValueError):
            continue
        dets = [(x1, y1, x2, y2, float(f"{conf:.4f}")) for x1, y1, x2, y2, conf, _ in truth[panel]]
        who = {(d[4], clip_box(d[:4], w, h)): int(row[5]) for d, row in zip(dets, truth[panel])}
        split = _split_of(panel, seed)
        stem = name.rsplit(".", 1)[0]
        for k, (conf, box, _) in enumerate(keep_faces(dets, w, h, args, Counter())):
            ident = who[(conf, box)]
            src = prep_out / FACES_DIR / book / f"{stem}_{k}.jpg"
            if ident < 0:
                false_pos += 1
                continue
            if src.is_file():
                files[split].setdefault(character_name(ident), []).append(
                    (src, f"{book}_{stem}_{k}.jpg"))
    chars = set().union(*(files[s] for s in SPLITS))
    kept = sorted(c for c in chars
                  if all(len(files[s].get(c, [])) >= MIN_PER_SPLIT[s] for s in SPLITS))
    dropped = sorted(chars - set(kept))
    counts: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        n = 0
        for c in kept:
            d = out / s / c
            d.mkdir(parents=True, exist_ok=True)
            for src, fname in files[s][c]:
                shutil.copyfile(src, d / fname)
                n += 1
        counts[s] = {"images": n, "characters": len(kept)}
    summary = {
        "source": str(prep_out), "ground_truth": str(gt_path), "seed": int(seed),
        "split": {"by": "panel", "fractions": dict(zip(SPLITS, SPLIT)),
                  "min_per_split": MIN_PER_SPLIT},
        "counts": counts, "false_positives": false_pos,
        "dropped_characters": dropped,
        "paths": {s: str(out / s) for s in SPLITS},
    }
    write_json_atomic(out / SUMMARY, summary)
    return summary

