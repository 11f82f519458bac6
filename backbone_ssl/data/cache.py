"""Decode-once image cache: every image decoded a single time into a memory-mapped uint8 file.

``data.cache: true`` makes pretraining read uint8 pixels from one file (``np.memmap``) instead of
opening, decoding and converting an image file for every view of every epoch. Each image keeps
its aspect ratio, so the random augmentations (lightly's transforms: RandomResizedCrop draws its
box relative to the image's own width and height) see the same geometry as from the file: an image
whose shorter side exceeds the working size ``S`` (``data.image_size``) is resized (bicubic) so
that its shorter side is ``S``; a smaller one is stored as it is (its own pixels). The file holds
the images one after another (``[h_i,w_i,3]`` each); ``KEY.index.npy`` holds ``[N,3]`` int64
``(offset, h, w)`` (``h = 0``: undecodable).

``square=True`` (``data.batch_augment``, whose batched rendering needs one size) instead squashes
every image to ``S x S``, as before: that path crops from a square, not from the image's own shape.

Files live in ``$BACKBONE_SSL_CACHE`` (default ``~/.cache/backbone_ssl/decoded``), never in the
data folder (a hidden folder there would become a class for torchvision's ``ImageFolder``). The
name is a hash of the image list (relative paths, sizes, modification times), ``S`` and the layout:
changing a file or the size builds a new cache. Files that cannot be decoded are recorded and
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
CACHE_VERSION = 2
CACHE_ENV = "BACKBONE_SSL_CACHE"


def default_cache_dir() -> Path:
    """``$BACKBONE_SSL_CACHE`` or ``~/.cache/backbone_ssl/decoded``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "backbone_ssl" / "decoded"


def cache_key(paths: list[Path], root: Path, size: int, square: bool = False) -> str:
    """Hash of the image list (relative path, size, mtime of each file), the cached size and the
    layout (``square``)."""
    shape = "square" if square else "aspect"
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{shape}|{root.resolve()}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_size(width: int, height: int, size: int, square: bool = False) -> tuple[int, int]:
    """``(w, h)`` an image of ``width x height`` is cached at: ``(size, size)`` when ``square``;
    else its own size when its shorter side is at most ``size``, otherwise resized so that its
    shorter side is ``size`` (aspect ratio kept)."""
    if square:
        return size, size
    short = min(width, height)
    if short <= size:
        return width, height
    scale = size / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_resized(path: Path, size: int, square: bool = False) -> np.ndarray | None:
    """``[h,w,3]`` uint8 pixels of ``path`` at :func:`cached_size` (bicubic), None when
    undecodable."""
    try:
        im = open_rgb(path)
    except DECODE_ERRORS as exc:
        log.warning("skipping undecodable image %s: %s", path, exc)
        return None
    target = cached_size(im.width, im.height, size, square)
    if im.size != target:
        im = im.resize(target, Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


class _DecodeJobs(Dataset):
    """Item ``i``: ``(i, pixels [h,w,3] uint8 or None)``; lets a DataLoader decode in parallel."""

    def __init__(self, paths: list[Path], size: int, square: bool) -> None:
        self.paths, self.size, self.square = paths, size, square

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        return i, decode_resized(self.paths[i], self.size, self.square)


def _as_list(batch: list) -> list:
    return batch


def index_file(array_file: Path) -> Path:
    """``KEY.index.npy`` beside the pixel file ``KEY.u8``: ``[N,3]`` int64 ``(offset, h, w)``."""
    return array_file.with_name(array_file.name[:-len(".u8")] + ".index.npy")


def build_decode_cache(paths: list[Path], root: Path, size: int,
                       cache_dir: str | os.PathLike | None = None,
                       num_workers: int = 0, square: bool = False) -> tuple[Path, np.ndarray]:
    """Decode ``paths`` once into ``CACHE_DIR/<key>.u8`` (the images' uint8 pixels one after
    another) and ``<key>.index.npy`` (``[N,3]`` int64 ``(offset, h, w)``).

    Returns ``(pixel file, ok [N] bool)``; ``ok[i]`` is False for an undecodable file. Reuses an
    existing cache with the same key; writes atomically (two processes building the same cache
    both succeed and leave one file).
    """
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    key = cache_key(paths, root, size, square)
    array_file = directory / f"{key}.u8"
    idx_file = index_file(array_file)
    if array_file.is_file() and idx_file.is_file():
        return array_file, np.load(idx_file)[:, 1] > 0
    n = len(paths)
    index = np.zeros((n, 3), dtype=np.int64)
    jobs = DataLoader(_DecodeJobs(paths, size, square), batch_size=64, num_workers=num_workers,
                      collate_fn=_as_list)
    offset = 0
    with atomic_path(array_file) as tmp:
        with open(tmp, "wb") as f:
            for batch in jobs:
                for i, pixels in batch:
                    if pixels is not None:
                        f.write(np.ascontiguousarray(pixels).tobytes())
                        index[i] = (offset, pixels.shape[0], pixels.shape[1])
                        offset += pixels.size
            f.flush()
            os.fsync(f.fileno())
        with atomic_path(idx_file) as tmp_idx:
            with open(tmp_idx, "wb") as f:
                np.save(f, index)
    ok = index[:, 1] > 0
    log.info("decode cache %s: %d images at %d px (%s; %d undecodable)", array_file, n, size,
             "squashed to squares" if square else "aspect ratio kept", int((~ok).sum()))
    return array_file, ok


class CachedImages(ImageFolderDataset):
    """An :class:`ImageFolderDataset` whose images come from the decode cache.

    Same items, labels, ``decode_near`` skipping and ``skipped`` counter; :meth:`load` returns a
    PIL RGB image with the file's aspect ratio (``square``: ``S x S``) built from the
    memory-mapped pixels (opened lazily in each process, so pickling to DataLoader workers copies
    no pixels).
    """

    def __init__(self, images: ImageFolderDataset, size: int, limit: int | None = None,
                 cache_dir: str | os.PathLike | None = None, num_workers: int = 0,
                 square: bool = False) -> None:
        # share the listing of ``images``; do not list the folder again
        n = len(images) if limit is None else min(len(images), limit)
        self.root, self.classes = images.root, images.classes
        self.paths, self.labels = images.paths[:n], images.labels[:n]
        self.transform, self.skipped = images.transform, images.skipped
        self.size, self.square = size, square
        self.array_file, self.ok = build_decode_cache(self.paths, self.root, size, cache_dir,
                                                      num_workers, square)
        self.index = np.load(index_file(self.array_file))
        self._pixels: np.ndarray | None = None

    @property
    def pixels(self) -> np.ndarray:
        """The cache's pixels, flat uint8, memory-mapped read-only (:attr:`index` says where
        each image lies)."""
        if self._pixels is None:
            if self.array_file.stat().st_size == 0:  # nothing decodable
                self._pixels = np.zeros(0, dtype=np.uint8)
            else:
                self._pixels = np.memmap(self.array_file, dtype=np.uint8, mode="r")
        return self._pixels

    def image_array(self, index: int) -> np.ndarray:
        """The cached pixels of image ``index``, ``[h,w,3]`` uint8 (a copy)."""
        offset, h, w = (int(v) for v in self.index[index])
        return np.array(self.pixels[offset:offset + h * w * 3]).reshape(h, w, 3)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state

    def load(self, index: int) -> Image.Image:
        """The cached image ``index`` as PIL RGB; raises OSError for a file that did not decode."""
        if not self.ok[index]:
            raise OSError(f"{self.paths[index]}: not decodable (found when the cache was built)")
        return Image.fromarray(self.image_array(index), "RGB")
