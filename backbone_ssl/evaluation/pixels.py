"""The raw-pixel baseline as an encoder: the image itself, flattened.

Raw pixels are the floor every learned encoder must beat (docs/EVALUATION.md): the image at the
encoder's input size, normalised exactly as the encoder sees it (``eval_transform``: resize,
centre crop, mean/std), flattened to ``[B, 3*S*S]``. kNN and clustering L2-normalise features
themselves, so cosine kNN on these vectors is "nearest image by normalised pixel values".

``pixels`` or ``pixels:S`` is accepted wherever an ``ENC`` is (``resolve_encoder``).
"""

from __future__ import annotations

import torch
from torch import nn

from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.errors import UserError

PIXELS_PREFIX = "pixels"
#: input size used when ``pixels`` is given without ``:S`` and nothing else says
DEFAULT_PIXEL_SIZE = 32


class Pixels(nn.Module):
    """``[B,3,S,S] -> [B,3*S*S]``: a parameter-free "encoder" that flattens its input."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.num_features = 3 * self.size * self.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def parse_pixels_spec(spec: str, default_size: int | None = None) -> int | None:
    """``"pixels"`` -> default size, ``"pixels:32"`` -> 32, anything else -> ``None``."""
    if spec != PIXELS_PREFIX and not spec.startswith(PIXELS_PREFIX + ":"):
        return None
    if spec == PIXELS_PREFIX:
        return int(default_size or DEFAULT_PIXEL_SIZE)
    raw = spec.split(":", 1)[1]
    try:
        size = int(raw)
    except ValueError:
        raise UserError(f"bad encoder '{spec}': the pixel size must be an integer, e.g. pixels:32")\
            from None
    if not 4 <= size <= 512:
        raise UserError(f"bad encoder '{spec}': the pixel size must be in [4, 512]")
    return size


def pixel_encoder(size: int, mean=DEFAULT_MEAN, std=DEFAULT_STD):
    """An :class:`~backbone_ssl.export.Encoder` for raw pixels at ``size`` px.

    ``mean``/``std`` default to the toolkit's; pass an encoder's own to normalise as it does.
    """
    from backbone_ssl.export import Encoder, freeze

    return Encoder(module=freeze(Pixels(size)), arch="pixels", input_size=int(size),
                   mean=tuple(mean), std=tuple(std),
                   meta={"method": "pixels", "steps": 0})


def pixels_like(encoder):
    """The pixel baseline for ``encoder``: its input size, its mean and std."""
    return pixel_encoder(encoder.input_size, encoder.mean, encoder.std)
