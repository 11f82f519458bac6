"""What ``--data FACES`` is, and which identity labels exist for it.

- a ``golden prepare`` output (or its ``faces/``): sub-folders are **books**, not identities, so
  the faces are unlabelled, unless a toy-comics ``ground_truth.json`` is given or found beside
  the recorded panels folder; then each crop ``faces/<book>/<page>_<panel>_<k>.jpg`` is traced
  back to its detection box (the same keep rule and order as ``golden prepare``:
  :func:`backbone_ssl.data.golden_faces.keep_faces`) and takes that box's identity (``-1``: a false
  detection, left out of the scores);
- any other image folder: sub-folders are identities (``ROOT/<identity>/<image>``), the labels.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backbone_ssl.data.golden_faces import keep_faces
from backbone_ssl.data.golden_format import FACES_DIR, PREPARE_JSON, PrepareArgs
from backbone_ssl.errors import UserError
from backbone_ssl.io import require_dir

GROUND_TRUTH = "ground_truth.json"


@dataclass
class FaceSource:
    """``root``: the image folder to embed; ``prepare``: the golden prepare output or None."""

    root: Path
    prepare: Path | None

    @property
    def folders_are_books(self) -> bool:
        return self.prepare is not None


def resolve_faces(path: str | os.PathLike) -> FaceSource:
    """The image folder behind ``--data`` and, for golden faces, their prepare output."""
    root = require_dir(path, "--data faces folder")
    if (root / PREPARE_JSON).is_file() and (root / FACES_DIR).is_dir():
        return FaceSource(root / FACES_DIR, root)
    if root.name == FACES_DIR and (root.parent / PREPARE_JSON).is_file():
        return FaceSource(root, root.parent)
    return FaceSource(root, None)


def find_ground_truth(source: FaceSource) -> Path | None:
    """``ground_truth.json`` beside the raw panels folder a prepare output records, if any."""
    if source.prepare is None:
        return None
    try:
        panels = Path(json.loads((source.prepare / PREPARE_JSON).read_text())["panels"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for cand in (panels.parent / GROUND_TRUTH, panels / GROUND_TRUTH):
        if cand.is_file():
            return cand
    return None


def golden_face_identities(paths: list[Path], faces_root: Path, prepare: Path,
                           truth_file: Path) -> np.ndarray:
    """Identity ``[N]`` int64 of each golden face crop from a toy-comics ground truth
    (``-1``: false detection or not traceable)."""
    try:
        record = json.loads((prepare / PREPARE_JSON).read_text())
        args = PrepareArgs(**record["args"])
        panels = Path(record["panels"])
        truth = json.loads(Path(truth_file).read_text())["boxes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read ground truth {truth_file} for {prepare}: {exc}") from None
    cache: dict[str, list[int]] = {}
    out = np.full(len(paths), -1, dtype=np.int64)
    for i, p in enumerate(paths):
        rel = p.relative_to(faces_root)
        if len(rel.parts) != 2:
            continue
        book, stem = rel.parts[0], rel.stem
        page_panel, _, k = stem.rpartition("_")
        panel = f"{book}/{page_panel}.jpg"
        if panel not in cache:
            cache[panel] = _panel_identities(truth.get(panel, []), panels / panel, args)
        ids = cache[panel]
        if k.isdigit() and int(k) < len(ids):
            out[i] = ids[int(k)]
    return out


def _panel_identities(boxes: list[list], panel_path: Path, args: PrepareArgs) -> list[int]:
    """Identities of a panel's kept faces, in ``golden prepare``'s crop order."""
    if not boxes or not panel_path.is_file():
        return []
    with Image.open(panel_path) as im:
        w, h = im.size
    seen, dets, ident = set(), [], {}
    for x1, y1, x2, y2, conf, who in boxes:
        key = (float(x1), float(y1), float(x2), float(y2), float(conf))
        if key in seen or x2 <= x1 or y2 <= y1:
            continue
        seen.add(key)
        dets.append(key)
        box = (min(max(key[0], 0.0), w), min(max(key[1], 0.0), h),
               min(max(key[2], 0.0), w), min(max(key[3], 0.0), h))
        ident[(key[4], box)] = int(who)
    kept = keep_faces(dets, w, h, args, Counter())
    return [ident.get((conf, box), -1) for conf, box, _ in kept]
