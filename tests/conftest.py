"""Shared fixtures: small deterministic image folders made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _decode_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Every test's decode cache (data.cache / data.batch_augment, on in the demo recipe) lives
    in a temporary folder, never in the user's ~/.cache."""
    import os

    from backbone_ssl.data.cache import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("decode_cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


def draw_identity_folder(root: Path, identities: int = 4, per_identity: int = 6, size: int = 32,
                         seed: int = 0) -> Path:
    """``root/id_k/img_j.png``: each identity a shape+colour, jittered per image (the first 8
    identities are all distinct; colours repeat after that)."""
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 180, 60), (40, 60, 220), (230, 200, 30), (160, 40, 200),
               (30, 200, 200), (240, 130, 20), (150, 150, 150)]
    for k in range(identities):
        d = root / f"id_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
            dr = ImageDraw.Draw(im)
            o = int(rng.integers(0, size // 6))
            box = (o, o, size - 1 - o // 2, size - 1 - o // 2)
            c = colours[k % len(colours)]
            if k % 2:
                dr.ellipse(box, fill=c)
            else:
                dr.rectangle(box, fill=c)
            im.save(d / f"img_{j}.png")
    return root


@pytest.fixture()
def tiny_split(tmp_path: Path) -> tuple[Path, Path]:
    """(train, test) identity folders with the same 4 identities, disjoint images."""
    train = draw_identity_folder(tmp_path / "train", per_identity=6, seed=0)
    test = draw_identity_folder(tmp_path / "test", per_identity=3, seed=1)
    return train, test
