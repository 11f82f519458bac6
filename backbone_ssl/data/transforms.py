"""Deterministic evaluation transforms (the augmentations for pretraining come from lightly)."""

from __future__ import annotations

from typing import Sequence

import torchvision.transforms as T

#: Normalisation used by every method unless the config says otherwise (ImageNet statistics,
#: the timm default, so exported encoders resolve to the usual preprocessing).
DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def eval_transform(
    image_size: int,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
) -> T.Compose:
    """PIL RGB image -> normalised ``[3, image_size, image_size]`` float tensor.

    Resize only, no crop."""
    return T.Compose(
        [
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )
