"""Small file helpers shared by every module: atomic writes and safe image decoding."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

from backbone_ssl.errors import UserError

#: Largest image we decode (pixels); above this PIL raises DecompressionBombError.
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600; give the file the usual umask mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


class ImageTooLargeError(ValueError):
    """An image above :data:`MAX_IMAGE_PIXELS` (a decompression bomb, or simply too big)."""


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully into RGB.

    Handles greyscale, palette, RGBA (composited on white), CMYK and 16-bit images. Raises
    ``OSError``/``ValueError`` (:class:`ImageTooLargeError` above :data:`MAX_IMAGE_PIXELS`, checked
    from the header before decoding) for files that are not decodable images; callers that stream
    data catch those, count the file and skip it.
    """
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as exc:  # > 2 x MAX_IMAGE_PIXELS: PIL refuses itself
        raise ImageTooLargeError(str(exc)) from None
    with im:
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:  # PIL only warns between 1x and 2x the limit
            raise ImageTooLargeError(
                f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {MAX_IMAGE_PIXELS}"
            )
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            import numpy as np

            arr = np.asarray(im, dtype=np.float64)
            # 16-bit modes span 0..65535; mode "I" (32-bit) has no fixed range: guess from data
            peak = 65535.0 if im.mode != "I" or arr.max() > 255 else 255.0
            im = Image.fromarray((arr / peak * 255.0).clip(0, 255).astype("uint8"), "L")
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(bg, rgba).convert("RGB")
        return im.convert("RGB")


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise UserError when it is not an existing directory."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p} (check the path)")
    if not p.is_dir():
        raise UserError(f"{what} is not a directory: {p}")
    return p
