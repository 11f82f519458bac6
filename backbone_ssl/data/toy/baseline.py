"""The raw-pixel nearest-neighbour baseline that toy identities are meant to defeat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from backbone_ssl.errors import UserError


def _load_pixels(root: Path, size: int) -> tuple[np.ndarray, list[str]]:
    from backbone_ssl.io import is_image_file, open_rgb

    feats, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p)):
            im = open_rgb(f).resize((size, size), Image.Resampling.BILINEAR)
            feats.append(np.asarray(im, dtype=np.float32).reshape(-1) / 255.0)
            labels.append(d.name)
    if not feats:
        raise UserError(f"no images found in {root} (expected ROOT/<identity>/<image>.jpg)")
    return np.stack(feats), labels


def raw_pixel_nn1(root_train: str | Path, root_test: str | Path, size: int = 32) -> float:
    """1-nearest-neighbour accuracy from ``root_train`` to ``root_test`` on raw pixels.

    Images are resized to ``size`` x ``size``, flattened, centred by the training mean and
    compared by cosine similarity; a test image scores when its nearest training image is in the
    folder of the same name. A baseline: features worth having beat it by a wide margin.
    """
    x_tr, y_tr = _load_pixels(Path(root_train), size)
    x_te, y_te = _load_pixels(Path(root_test), size)
    mean = x_tr.mean(axis=0, keepdims=True)
    a = x_tr - mean
    b = x_te - mean
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-8
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-8
    nearest = (b @ a.T).argmax(axis=1)
    hits = sum(y_tr[j] == y for j, y in zip(nearest.tolist(), y_te))
    return float(hits / len(y_te))
