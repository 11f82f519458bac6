"""SimCLR: contrastive learning of visual representations (Chen et al., 2020,
https://arxiv.org/abs/2002.05709).

Backbone + ``SimCLRProjectionHead``; ``NTXentLoss`` over the 2B views of a batch (in-batch
negatives); ``SimCLRTransform`` views. All parts are lightly's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform

from backbone_ssl.config import RunConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.methods.base import SSLMethod


@dataclass
class SimCLRSection:
    """SimCLR's own settings (paper widths scaled down for small CPU runs)."""

    proj_hidden_dim: int = 512  # paper: 2048
    proj_out_dim: int = 128
    temperature: float = 0.1  # NT-Xent temperature (paper: 0.1 at large batch)
    min_scale: float = 0.2  # RandomResizedCrop lower bound (paper: 0.08; faces are small)
    hf_prob: float = 0.5
    cj_strength: float = 0.5


@dataclass
class SimCLRConfig(RunConfig):
    method: str = "simclr"
    simclr: SimCLRSection = field(default_factory=SimCLRSection)


class SimCLR(SSLMethod):
    """SimCLR on any timm backbone."""

    name = "simclr"
    config_cls = SimCLRConfig

    def __init__(self, cfg: SimCLRConfig) -> None:
        super().__init__(cfg)
        s = cfg.simclr
        self.projection_head = SimCLRProjectionHead(self.feature_dim, s.proj_hidden_dim,
                                                    s.proj_out_dim)
        self.criterion = NTXentLoss(temperature=s.temperature)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]

    def train_transform(self) -> Callable:
        s = self.cfg.simclr
        return SimCLRTransform(
            input_size=self.cfg.data.image_size, min_scale=s.min_scale, hf_prob=s.hf_prob,
            cj_strength=s.cj_strength,
            normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)})

    def collapse_value(self) -> float | None:
        """NT-Xent of a constant embedding: every logit equal, ``log(2B - 1)``."""
        return math.log(2 * self.cfg.data.batch_size - 1)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.backbone(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.backbone(views[1]))
        return self.criterion(z0, z1), f0
