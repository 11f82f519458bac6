"""Torch datasets over a ``golden prepare`` output folder (``--data PREP_OUT``).

- :func:`face_crops`: the ``faces/`` crops as an :class:`ImageFolderDataset` (one class per book);
- :class:`PanelSequences`: face-cloze samples (context panels, masked last panel, target face);
- :class:`PersonPanels`: panels with a person / no-person label.

Train and test are split by book (:func:`split_books`), so no book feeds both. Panels are read
from the raw panels folder recorded in ``prepare.json``. Sequences or labels whose panel file is
missing are dropped at construction and counted in ``skipped["missing"]`` (with one warning);
no sample left is a :class:`UserError`. A panel that fails to decode later is replaced by the next
sample and counted in ``skipped["undecodable"]``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from backbone_ssl.data.datasets import ImageFolderDataset, first_decodable
from backbone_ssl.data.golden_faces import face_box_in_panel
from backbone_ssl.data.golden_format import (
    FACES_DIR,
    LABELS_CSV,
    SEQUENCES,
    book_key,
    read_prepare_record,
)
from backbone_ssl.data.signed import to_signed
from backbone_ssl.data.transforms import eval_transform
from backbone_ssl.errors import UserError
from backbone_ssl.io import open_rgb

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")


def face_crops(prep_out: str | os.PathLike, transform: Callable | None = None
               ) -> ImageFolderDataset:
    """The face crops ``PREP_OUT/faces/<book>/*.jpg``.

    Items are ``(transform(PIL RGB), book index)``."""
    return ImageFolderDataset(Path(prep_out) / FACES_DIR, transform)


def split_books(books: Iterable[str], split: str, test_fraction: float = 0.2, seed: int = 0
                ) -> set[str]:
    """The books of ``split``: a seeded permutation of the sorted book names; the first
    ``max(1, round(test_fraction * n))`` are the test books (none when there is one book)."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ordered = sorted(set(books), key=book_key)
    if split == "all":
        return set(ordered)
    n_test = 0 if len(ordered) < 2 or test_fraction == 0 else max(
        1, round(test_fraction * len(ordered)))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    test = {ordered[i] for i in perm[:n_test]}
    return test if split == "test" else set(ordered) - test


def _book_of(panel: str) -> str:
    return panel.split("/", 1)[0]


def _drop_missing(panels_root: Path, items: list, panels_of: Callable[[Any], list[str]],
                  what: str) -> tuple[list, int]:
    """Keep the items whose panel files all exist; returns ``(kept, dropped)``."""
    exists: dict[str, bool] = {}
    kept = []
    for item in items:
        ok = True
        for p in panels_of(item):
            if p not in exists:
                exists[p] = (panels_root / p).is_file()
            ok = ok and exists[p]
        if ok:
            kept.append(item)
    dropped = len(items) - len(kept)
    if dropped:
        missing = sorted(p for p, ok in exists.items() if not ok)
        log.warning("dropping %d %s whose panel files are missing under %s (e.g. %s)",
                    dropped, what, panels_root, ", ".join(missing[:3]))
    return kept, dropped


class PanelSequences(Dataset):
    """Face-cloze samples from ``PREP_OUT/sequences.json``.

    Item (a dict): ``panels`` ``[P,3,S,S]`` float in [-1, 1] (each panel cropped to its
    ``panel_area`` and resized to ``S = panel_size``; the last panel's face area filled with
    ``mask_value``), ``face`` ``[3,F,F]`` in [-1, 1] (the last panel's ``face_area``, ``F =
    face_size``), ``mask`` ``[S,S]`` float, 1 on the masked face area (only with
    ``return_mask``), ``box`` ``[4]`` long ``x1, y1, x2, y2`` of that area in the resized last
    panel (``x2``/``y2`` exclusive), ``index`` int (position in this dataset).
    """

    def __init__(
        self,
        prep_out: str | os.PathLike,
        split: str = "train",
        test_fraction: float = 0.2,
        panel_size: int = 128,
        face_size: int = 64,
        mask_value: float = 0.0,
        return_mask: bool = True,
        seed: int = 0,
    ) -> None:
        if not -1.0 <= mask_value <= 1.0:
            raise UserError(f"mask_value must be in [-1, 1], got {mask_value}")
        _, self.panels_root = read_prepare_record(prep_out)
        path = Path(prep_out) / SEQUENCES
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from exc
        entries = [raw[k] for k in sorted(raw, key=int)]
        books = split_books({_book_of(e[0][0]) for e in entries}, split, test_fraction, seed)
        entries = [e for e in entries if _book_of(e[0][0]) in books]
        self.entries, dropped = _drop_missing(self.panels_root, entries, lambda e: e[0],
                                              "sequences")
        if not self.entries:
            raise UserError(f"no sequence left for split {split!r} in {path} "
                            f"({dropped} dropped for missing panel files)")
        self.split, self.panel_size, self.face_size = split, panel_size, face_size
        self.mask_value, self.return_mask = float(mask_value), return_mask
        self.skipped: Counter[str] = Counter(missing=dropped)

    def __len__(self) -> int:
        return len(self.entries)

    def books(self) -> list[str]:
        """The book of every item, in order."""
        return [_book_of(e[0][0]) for e in self.entries]

    def _load(self, index: int) -> dict[str, Any]:
        frames, areas = self.entries[index]
        s = self.panel_size
        panels = []
        face = None
        for j, (frame, (pa, fa)) in enumerate(zip(frames, areas)):
            img = open_rgb(self.panels_root / frame)
            panels.append(to_signed(img.crop(pa), s))
            if j == len(frames) - 1:
                face = to_signed(img.crop(fa), self.face_size)
        box = face_box_in_panel(*areas[-1], s)
        mask = torch.zeros(s, s)
        mask[box[1]:box[3], box[0]:box[2]] = 1.0
        stack = torch.stack(panels)
        stack[-1][:, mask.bool()] = self.mask_value
        item = {"panels": stack, "face": face,
                "box": torch.tensor(box, dtype=torch.long), "index": index}
        if self.return_mask:
            item["mask"] = mask
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        found = first_decodable(self._load, index, len(self), self._skip)
        if found is None:
            raise RuntimeError(f"no decodable sequence near index {index} under "
                               f"{self.panels_root}")
        return found[1]

    def _skip(self, i: int, exc: Exception) -> None:
        log.warning("skipping sequence %d: %s", i, exc)
        self.skipped["undecodable"] += 1


class PersonPanels(Dataset):
    """Whole panels with a person label, from ``PREP_OUT/person_labels.csv``.

    Item: ``(image, label)``: ``image`` is ``transform(PIL RGB panel)``, by default
    :func:`eval_transform` (resized to ``[3, image_size, image_size]``, ImageNet-normalised);
    ``label`` 1 = a person (a kept face), 0 = no person. :attr:`labels` and :meth:`books` give
    the label and book of every item (for a class-balanced sampler, e.g. torch's
    ``WeightedRandomSampler`` with ``1 / count[label]`` weights).
    """

    def __init__(
        self,
        prep_out: str | os.PathLike,
        split: str = "train",
        image_size: int = 128,
        transform: Callable | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        _, self.panels_root = read_prepare_record(prep_out)
        path = Path(prep_out) / LABELS_CSV
        try:
            with open(path, newline="") as f:
                rows = [(r["panel"], int(r["has_person"])) for r in csv.DictReader(f)]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise UserError(f"cannot read {path} (expected header panel,has_person): {exc}"
                            ) from exc
        books = split_books({_book_of(p) for p, _ in rows}, split, test_fraction, seed)
        rows = [r for r in rows if _book_of(r[0]) in books]
        rows, dropped = _drop_missing(self.panels_root, rows, lambda r: [r[0]], "panel labels")
        if not rows:
            raise UserError(f"no labelled panel left for split {split!r} in {path} "
                            f"({dropped} dropped for missing panel files)")
        self.panels = [p for p, _ in rows]
        self.labels: list[int] = [y for _, y in rows]
        self.transform = transform if transform is not None else eval_transform(image_size)
        self.split = split
        self.skipped: Counter[str] = Counter(missing=dropped)

    def __len__(self) -> int:
        return len(self.panels)

    def books(self) -> list[str]:
        """The book of every item, in order."""
        return [_book_of(p) for p in self.panels]

    def class_counts(self) -> list[int]:
        """``[no-person count, person count]``."""
        counts = Counter(self.labels)
        return [counts.get(0, 0), counts.get(1, 0)]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        found = first_decodable(lambda i: open_rgb(self.panels_root / self.panels[i]), index,
                                len(self), self._skip)
        if found is None:
            raise RuntimeError(f"no decodable panel near index {index} under {self.panels_root}")
        i, img, _ = found
        return self.transform(img), self.labels[i]

    def _skip(self, i: int, exc: Exception) -> None:
        log.warning("skipping panel %s: %s", self.panels[i], exc)
        self.skipped["undecodable"] += 1
