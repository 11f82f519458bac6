"""The inpainting generator's decoder: a coarse U-Net-style decoder (Ronneberger et al.,
2015) over a timm encoder's multi-scale features (``forward_intermediates``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
    )


class CoarseDecoder(nn.Module):
    """U-Net-style decoder: the encoder's final features and its intermediate feature maps
    (strides ``r_0 < r_1 < ...``, e.g. 2, 4, 8, 16, 32) -> ``[B,3,H,W]`` in [-1, 1].

    The final features (``[B,C,H/32,W/32]`` for most CNNs) are the bottleneck; at each finer scale
    the running map is upsampled (bilinear) to the skip's size, concatenated with it and passed
    through :func:`conv_block`; a last block at full resolution and a 3x3 conv + tanh give the
    image. Widths: ``width * r / 2`` channels at stride ``r`` (at least ``width``, at most
    ``8 * width``).
    """

    def __init__(self, final_channels: int, skip_channels: Sequence[int],
                 reductions: Sequence[int], width: int = 32) -> None:
        super().__init__()

        def w(r: int) -> int:
            return min(8 * width, width * max(1, r // 2))

        deepest = reductions[-1] if reductions else 32
        self.bottleneck = conv_block(final_channels, w(deepest))
        c = w(deepest)
        ups = []
        for ch, r in zip(reversed(skip_channels[:-1]), reversed(reductions[:-1])):
            ups.append(conv_block(c + ch, w(r)))
            c = w(r)
        self.ups = nn.ModuleList(ups)
        self.full = conv_block(c, width)
        self.to_rgb = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, final: torch.Tensor, skips: Sequence[torch.Tensor],
                out_size: tuple[int, int]) -> torch.Tensor:
        x = self.bottleneck(final)
        for block, skip in zip(self.ups, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        return torch.tanh(self.to_rgb(self.full(x)))
