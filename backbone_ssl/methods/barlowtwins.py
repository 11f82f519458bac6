"""Barlow Twins: redundancy reduction (Zbontar et al., 2021, https://arxiv.org/abs/2103.03230).

Backbone + ``BarlowTwinsProjectionHead``; ``BarlowTwinsLoss`` on the cross-correlation of the
two views' batch-normalised embeddings; BYOL's asymmetric views (``BYOLTransform``), as in
lightly's Barlow Twins example and the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.transforms.byol_transform import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
)

from backbone_ssl.config import SSLConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.methods.base import SSLMethod


@dataclass
class BarlowTwinsSection:
    """Barlow Twins' own settings (paper widths scaled down for small CPU runs)."""

    proj_hidden_dim: int = 512  # paper: 8192
    proj_out_dim: int = 512  # paper: 8192
    lambda_param: float = 0.005  # off-diagonal weight (paper: 0.0051)
    min_scale: float = 0.2  # RandomResizedCrop lower bound (paper: 0.08; faces are small)
    hf_prob: float = 0.5
    cj_strength: float = 1.0


@dataclass
class BarlowTwinsConfig(SSLConfig):
    method: str = "barlowtwins"
    barlowtwins: BarlowTwinsSection = field(default_factory=BarlowTwinsSection)


class BarlowTwins(SSLMethod):
    """Barlow Twins on any timm backbone."""

    name = "barlowtwins"
    config_cls = BarlowTwinsConfig

    def __init__(self, cfg: BarlowTwinsConfig) -> None:
        super().__init__(cfg)
        b = cfg.barlowtwins
        self.projection_head = BarlowTwinsProjectionHead(self.feature_dim, b.proj_hidden_dim,
                                                         b.proj_out_dim)
        self.criterion = BarlowTwinsLoss(lambda_param=b.lambda_param)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]

    def train_transform(self) -> Callable:
        b = self.cfg.barlowtwins
        common = dict(input_size=self.cfg.data.image_size, min_scale=b.min_scale,
                      hf_prob=b.hf_prob, cj_strength=b.cj_strength,
                      normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)})
        return BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))

    def collapse_value(self) -> float | None:
        """Undefined: a constant embedding has zero variance and the normalisation divides by
        it."""
        return None

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.backbone(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.backbone(views[1]))
        return self.criterion(z0, z1), f0
