"""Datasets over image folders that survive broken files.

``ImageFolderDataset`` reads ``ROOT/<identity>/<image>`` (torchvision ImageFolder style) or a flat
folder of images (every image gets label 0). Files that cannot be decoded are skipped at load time
and counted in :attr:`ImageFolderDataset.skipped`; a failure during training never kills a run.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, TypeVar

from torch.utils.data import Dataset

from backbone_ssl.errors import UserError
from backbone_ssl.io import is_image_file, open_rgb, require_dir

log = logging.getLogger(__name__)

#: What a broken image file raises when decoded (includes io.ImageTooLargeError, for bombs).
DECODE_ERRORS = (OSError, ValueError, SyntaxError)
#: Samples tried in a row (the one asked for, then the next ones) before decoding gives up.
MAX_DECODE_ATTEMPTS = 50

T = TypeVar("T")


def first_decodable(load: Callable[[int], T], index: int, n: int,
                    on_error: Callable[[int, Exception], None]) -> tuple[int, T, int] | None:
    """Try ``load(index)``, then ``load(index + 1)``, ... (modulo ``n``; at most
    :data:`MAX_DECODE_ATTEMPTS` tries) until one raises none of :data:`DECODE_ERRORS`.

    Returns ``(used_index, load(used_index), failed_tries)``, or ``None`` when every try failed;
    ``on_error(i, exc)`` is called for each failure (to log and count it).
    """
    for attempt in range(min(n, MAX_DECODE_ATTEMPTS)):
        i = (index + attempt) % n
        try:
            return i, load(i), attempt
        except DECODE_ERRORS as exc:
            on_error(i, exc)
    return None


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], list[int], list[str]]:
    """List images under ``root``.

    Returns ``(paths, labels, classes)``: one label per image (index into ``classes``, the sorted
    sub-folder names). A folder holding images directly (no sub-folders with images) is one class.
    Raises UserError when ``root`` is missing or holds no image.
    """
    root = require_dir(root, "image folder")
    classes = sorted(
        d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
    )
    paths: list[Path] = []
    labels: list[int] = []
    kept: list[str] = []
    for name in classes:
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and is_image_file(p)
        )
        if not files:
            continue
        kept.append(name)
        paths.extend(files)
        labels.extend([len(kept) - 1] * len(files))
    if not paths:
        files = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
        if files:
            return files, [0] * len(files), [root.name]
        raise UserError(
            f"no images found in {root} "
            "(expected ROOT/<identity>/<image>.jpg or a folder of images)"
        )
    return paths, labels, kept


class ImageFolderDataset(Dataset):
    """Labelled images from an identity-folder tree.

    Item: ``(image, label)`` where ``image`` is whatever ``transform`` returns for a PIL RGB image
    (for example a ``[3,H,W]`` float tensor, or a list of views) and ``label`` an int.
    Undecodable files are replaced by the next decodable one and counted in ``skipped``
    (a per-worker counter; :meth:`skipped_total` sums what the main process saw).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None) -> None:
        self.root = Path(root)
        self.paths, self.labels, self.classes = list_image_folder(root)
        self.transform = transform
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int):
        """Decode image ``index`` as PIL RGB; raises on a broken file."""
        return open_rgb(self.paths[index])

    def decode_near(self, index: int) -> tuple[int, Any, int]:
        """Decode image ``index`` or, if broken, the next decodable one.

        Returns ``(used_index, PIL image, n_broken_files_passed)``; broken files are counted in
        ``skipped`` and logged once.
        """
        def skip(i: int, exc: Exception) -> None:
            if str(self.paths[i]) not in self.skipped:
                log.warning("skipping undecodable image %s: %s", self.paths[i], exc)
            self.skipped[str(self.paths[i])] += 1

        found = first_decodable(self.load, index, len(self.paths), skip)
        if found is None:
            raise UserError(f"no decodable image near index {index} in {self.root}: "
                            f"{min(len(self.paths), MAX_DECODE_ATTEMPTS)} files in a row failed "
                            "to decode (is it the right folder?)")
        return found

    def __getitem__(self, index: int):
        i, img, _ = self.decode_near(index)
        out = self.transform(img) if self.transform is not None else img
        return out, self.labels[i]


class PretrainViews(Dataset):
    """Augmented views for self-supervised pretraining.

    Item: ``(views, label, skipped)``: ``views`` is the list the multi-view transform returns
    (``V x [3,H,W]``), ``label`` the folder label (ignored by SSL methods) and ``skipped`` how many
    broken files were passed over to produce this item (summed and logged by the method).
    """

    def __init__(self, images: ImageFolderDataset, transform: Callable,
                 max_images: int | None = None) -> None:
        self.images = images
        self.transform = transform
        self.length = len(images) if max_images is None else min(len(images), max_images)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        i, img, skipped = self.images.decode_near(index)
        return self.transform(img), self.images.labels[i], skipped


def resolve_image_root(path: str | os.PathLike) -> Path:
    """The image folder behind ``--data``: an identity-folder tree as is, the training identities
    of an iCartoonFace root, or the ``faces/`` folder of a ``golden prepare`` output."""
    root = require_dir(path, "data folder")
    icf = root / "personai_icartoonface_rectrain" / "icartoonface_rectrain"
    if icf.is_dir():
        return icf
    if (root / "sequences.json").is_file() and (root / "faces").is_dir():
        return root / "faces"
    return root


def scan_decodable(dataset: ImageFolderDataset) -> int:
    """Decode every file once, drop the broken ones from ``dataset``; return how many were dropped.

    Used by evaluation, where every image must map to one feature row.
    """
    keep_paths, keep_labels, dropped = [], [], 0
    for p, y in zip(dataset.paths, dataset.labels):
        try:
            open_rgb(p)
        except DECODE_ERRORS as exc:
            log.warning("skipping undecodable image %s: %s", p, exc)
            dataset.skipped[str(p)] += 1
            dropped += 1
            continue
        keep_paths.append(p)
        keep_labels.append(y)
    if not keep_paths:
        raise UserError(f"no decodable image in {dataset.root}")
    dataset.paths, dataset.labels = keep_paths, keep_labels
    return dropped
