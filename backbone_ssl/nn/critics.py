"""Critics (discriminators) shared by pretraining and downstream.

Global and local critics for inpainting (Iizuka et al., 2017, "Globally and Locally Consistent
Image Completion"; Li et al., 2017, "Generative Face Completion"): small DCGAN-style critics
(Radford et al., 2015), strided 4x4 convolutions with LeakyReLU and no normalisation (so they
suit every loss in :mod:`backbone_ssl.nn.gan_losses`, WGAN-GP included, whose penalty is per
sample), then a linear layer to one score per image. The global one sees the whole completed
image, the local one the hole's bounding box cropped and resized to a fixed size
(:func:`crop_boxes`, differentiable ``roi_align``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.ops import roi_align


class ConvDiscriminator(nn.Module):
    """``[B,C,S,S]`` -> ``[B]`` scores (logits for non-saturating / hinge, critic for WGAN).

    Halves the resolution with stride-2 convolutions until it is at most 4 (channels
    ``width, 2*width, ...`` up to ``8*width``), then flattens into a linear layer.
    """

    def __init__(self, image_size: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch, size = in_channels, width, image_size
        n_down = max(1, math.ceil(math.log2(max(image_size, 2) / 4)))
        for _ in range(n_down):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            ch_in, ch, size = ch, min(ch * 2, 8 * width), size // 2  # k4 s2 p1: floor(n/2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch_in * size * size, 1)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` ``[B,4]`` ``(x1,y1,x2,y2)`` (pixels) out of ``images`` ``[B,C,H,W]`` and
    resize each to ``[C,size,size]`` (bilinear, differentiable) -> ``[B,C,size,size]``."""
    idx = torch.arange(images.shape[0], device=images.device, dtype=images.dtype)[:, None]
    rois = torch.cat([idx, boxes.to(images)], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


class ProjectedDiscriminator(nn.Module):
    """Multi-scale critic on frozen features (Projected GAN, Sauer et al., 2021,
    https://arxiv.org/abs/2111.01007): ``features(x)`` returns a list of maps ``[B,C_i,H_i,W_i]``
    (a frozen pretrained encoder's stages), each judged by its own small trainable head; the
    score is the sum of the per-scale scores -> ``[B]``.

    Each head: 1x1 conv to ``width`` channels, LeakyReLU, 3x3 conv, LeakyReLU, 1x1 conv to one
    logit map, averaged over space. No normalisation
    (WGAN-GP's per-sample penalty holds). Unlike the paper there is no fixed random channel
    mixing and no feature-pyramid fusion: small heads are what a CPU run affords.
    """

    def __init__(self, features: nn.Module, channels: list[int], width: int = 64) -> None:
        super().__init__()
        self.features = features
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1), nn.LeakyReLU(0.2, inplace=True),
                          nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                          nn.Conv2d(width, 1, 1))
            for c in channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return sum(head(f).mean(dim=(1, 2, 3)) for head, f in zip(self.heads, maps))
