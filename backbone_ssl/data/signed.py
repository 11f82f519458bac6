"""Images in [-1, 1], the pixel space of the inpainting and downstream generators, and back.

Every [-1, 1] <-> [0, 1] conversion of the toolkit goes through here: :func:`to_signed` (PIL ->
tensor), :func:`signed_transform` (the same as a dataset transform) and :func:`to_unit` (tensor
-> [0, 1], e.g. for metrics, plots or ImageNet normalisation).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torchvision.transforms.functional as TF
from PIL import Image


def to_signed(img: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL RGB -> ``[3,H,W]`` float in [-1, 1]; with ``size``, resized to ``size`` x ``size``
    first (bicubic)."""
    if size is not None:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return TF.to_tensor(img).mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def signed_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """A dataset transform: PIL -> ``[3,size,size]`` in [-1, 1] (:func:`to_signed`; picklable,
    so it works in loader worker processes)."""
    return partial(to_signed, size=size)


def to_unit(x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """``[...]`` in [-1, 1] -> [0, 1] (differentiable; detach first for metrics).

    ``clamp`` (default) clips to [0, 1] for metrics and plots; ``clamp=False`` is the plain affine
    map ``(x + 1) / 2``, for inputs that may leave [-1, 1] on purpose (DiffAugment's colour shifts
    before an encoder's normalisation), whose values and gradients must pass unchanged."""
    y = (x + 1.0) * 0.5
    return y.clamp(0.0, 1.0) if clamp else y
