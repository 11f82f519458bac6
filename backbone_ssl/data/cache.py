"""Decode-once image cache: every image decoded a single time into a memory-mapped uint8 array.

``data.cache: true`` makes pretraining read ``[H,W,3]`` uint8 pixels from one ``.npy`` file
(``np.load(..., mmap_mode="r")``) instead of opening, decoding and converting an image file for
every view of every epoch. The file holds ``[N,S,S,3]`` uint8, each image resized once to the
working size ``S`` (``data.image_size``, bicubic, as the evaluation transform does); the random
augmentations (lightly's transforms) still run per sample on the cached pixels, so the views are
drawn exactly as from the files, up to that one resize.

Files live in ``$BACKBONE_SSL_CACHE`` (default ``~/.cache/backbone_ssl/decoded``), never in the
data folder (a hidden folder there would become a class for torchvision's ``ImageFolder``). The
name is a hash of the image list (relative paths, sizes, modification times) and ``S``: changing
a file or the size builds a new cache. Files that cannot be decoded are recorded in a mask and
skipped exactly as :class:`~backbone_ssl.data.datasets.ImageFolderDataset` skips them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from backbone_ssl.data.datasets import DECODE_ERRORS, ImageFolderDataset
from backbone_ssl.io import atomic_path, open_rgb

log = logging.getLogger(__name__)

#: Bump when the file layout or the resize changes: old caches are then ignored.
CACHE_VERSION = 1
CACHE_ENV = "BACKBONE_SSL_CACHE"


def default_cache_dir() -> Path:
    """``$BACKBONE_SSL_CACHE`` or ``~/.cache/backbone_ssl/decoded``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "backbone_ssl" / "decoded"


def cache_key(paths: list[Path], root: Path, size: int) -> str:
    """Hash of the image list (relative path, size, mtime of each file) and the cached size."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{root.resolve()}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def decode_resized(path: Path, size: int) -> np.ndarray | None:
    """``[size,size,3]`` uint8 pixels of ``path`` (bicubic resize), None when undecodable."""
    try:
        im = open_rgb(path)
    except DECODE_ERRORS as exc:
        log.warning("skipping undecodable image %s: %s", path, exc)
        return None
    if im.size != (size, size):
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


class _DecodeJobs(Dataset):
    """Item ``i``: ``(i, pixels [S,S,3] uint8 or None)``; lets a DataLoader decode in parallel."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        return i, decode_resized(self.paths[i], self.size)


def _as_list(batch: list) -> list:
    return batch


def build_decode_cache(paths: list[Path], root: Path, size: int,
                       cache_dir: str | os.PathLike | None = None,
                       num_workers: int = 0) -> tuple[Path, np.ndarray]:
    """Decode ``paths`` once into ``CACHE_DIR/<key>.npy`` (``[N,size,size,3]`` uint8).

    Returns ``(array file, ok [N] bool)``; ``ok[i]`` is False for an undecodable file (its pixels
    are zeros). Reuses an existing cache with the same key; writes atomically (two processes
    building the same cache both succeed and leave one file).
    """
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(paths, root, size)
    array_file, ok_file = directory / f"{key}.npy", directory / f"{key}.ok.npy"
    if array_file.is_file() and ok_file.is_file():
        return array_file, np.load(ok_file)
    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    jobs = DataLoader(_DecodeJobs(paths, size), batch_size=64, num_workers=num_workers,
                      collate_fn=_as_list)
    with atomic_path(array_file) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(n, size, size, 3))
        for batch in jobs:
            for i, pixels in batch:
                if pixels is not None:
                    out[i], ok[i] = pixels, True
        out.flush()
        del out
        with atomic_path(ok_file) as tmp_ok:
            with open(tmp_ok, "wb") as f:
                np.save(f, ok)
    log.info("decode cache %s: %d images of %d px (%d undecodable)", array_file, n, size,
             int((~ok).sum()))
    return array_file, ok


class CachedImages(ImageFolderDataset):
    """An :class:`ImageFolderDataset` whose images come from the decode cache.

    Same items, labels, ``decode_near`` skipping and ``skipped`` counter; :meth:`load` returns a
    PIL RGB image ``S x S`` built from the memory-mapped ``[N,S,S,3]`` uint8 array (opened lazily
    in each process, so pickling to DataLoader workers copies no pixels).
    """

    def __init__(self, images: ImageFolderDataset, size: int, limit: int | None = None,
                 cache_dir: str | os.PathLike | None = None, num_workers: int = 0) -> None:
        # share the listing of ``images``; do not list the folder again
        n = len(images) if limit is None else min(len(images), limit)
        self.root, self.classes = images.root, images.classes
        self.paths, self.labels = images.paths[:n], images.labels[:n]
        self.transform, self.skipped = images.transform, images.skipped
        self.size = size
        self.array_file, self.ok = build_decode_cache(self.paths, self.root, size, cache_dir,
                                                      num_workers)
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        """The cache, ``[N,S,S,3]`` uint8, memory-mapped read-only."""
        if self._pixels is None:
            self._pixels = np.load(self.array_file, mmap_mode="r")
        return self._pixels

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state

    def load(self, index: int) -> Image.Image:
        """The cached image ``index`` as PIL RGB; raises OSError for a file that did not decode."""
        if not self.ok[index]:
            raise OSError(f"{self.paths[index]}: not decodable (found when the cache was built)")
        return Image.fromarray(np.array(self.pixels[index]), "RGB")
