"""``--export-identities DIR``: clusters as identity folders ``DIR/<cluster>/<face>`` that
``downstream siamese`` and ``pretrain identity`` read as ``ROOT/<identity>/<image>``.

Faces are hard-linked (no extra disk); across filesystems (or where links are refused) they are
copied. ``DIR/identities.csv`` is the manifest (``identity,file,source,confidence``). Singletons
are left out by default (``min_size``): a pseudo-identity of one face makes no pair.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from backbone_ssl.errors import UserError
from backbone_ssl.io import atomic_path

MANIFEST = "identities.csv"


def check_export_dir(out: Path) -> None:
    """Refuse an existing non-empty ``out`` that an earlier export did not write."""
    if out.exists() and (not out.is_dir() or
                         (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise UserError(f"--export-identities {out} exists and was not written by "
                        "`cluster --export-identities`; choose a new or empty folder")


def _remove_previous(out: Path) -> int:
    """Unlink the faces an earlier export listed in its manifest (and the folders that leaves
    empty), so clusters of an earlier run do not mix with this one; returns how many."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return 0
    removed = 0
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            folder, name = row.get("identity", ""), row.get("file", "")
            if not folder or not name or "/" in folder + name or ".." in (folder, name):
                continue
            path = out / folder / name
            if path.is_file():
                path.unlink()
                removed += 1
            if (out / folder).is_dir() and not any((out / folder).iterdir()):
                (out / folder).rmdir()
    return removed


def export_identities(out: str | os.PathLike, paths: list[Path], labels: np.ndarray,
                      conf: np.ndarray, faces_root: Path, min_size: int = 2) -> dict[str, int]:
    """Write clusters of at least ``min_size`` faces as identity folders; returns counts
    (``identities``, ``faces``, ``linked``, ``copied``). The faces an earlier export listed in
    its manifest are removed first; nothing else is touched."""
    out = Path(out)
    check_export_dir(out)
    _remove_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = Counter(labels.tolist())
    counts = {"identities": 0, "faces": 0, "linked": 0, "copied": 0}
    rows = []
    for path, lab, c in zip(paths, labels.tolist(), conf.tolist()):
        if sizes[lab] < min_size:
            continue
        rel = Path(path).relative_to(faces_root)
        name = "__".join(rel.parts)  # book/page_panel_k.jpg -> book__page_panel_k.jpg
        folder = out / f"cluster_{lab:06d}"
        folder.mkdir(exist_ok=True)
        dst = folder / name
        try:
            os.link(path, dst)
            counts["linked"] += 1
        except OSError:
            shutil.copy2(path, dst)
            counts["copied"] += 1
        counts["faces"] += 1
        rows.append((folder.name, name, str(path), f"{c:.4f}"))
    counts["identities"] = len({r[0] for r in rows})
    with atomic_path(out / MANIFEST) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["identity", "file", "source", "confidence"])
        w.writerows(rows)
    return counts
