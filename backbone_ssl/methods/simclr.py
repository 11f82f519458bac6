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

from backbone_ssl.config import SSLConfig
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
class SimCLRConfig(SSLConfig):
    method: str = "simclr"
    simclr: SimCLRSection = field(default_factory=SimCLRSection)


def simclr_views(image_size: int, min_scale: float, hf_prob: float,
                 cj_strength: float) -> SimCLRTransform:
    """lightly's two-view SimCLR transform with our normalisation (also NNCLR's views)."""
    return SimCLRTransform(
        input_size=image_size, min_scale=min_scale, hf_prob=hf_prob, cj_strength=cj_strength,
        normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)})


def ntxent_collapse_value(batch_size: int) -> float:
    """NT-Xent of a constant embedding over 2B views: every logit equal, ``log(2B - 1)``."""
    return math.log(2 * batch_size - 1)


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
        return simclr_views(self.cfg.data.image_size, s.min_scale, s.hf_prob, s.cj_strength)

    def collapse_value(self) -> float | None:
        return ntxent_collapse_value(self.cfg.data.batch_size)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.backbone(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.backbone(views[1]))
        return self.criterion(z0, z1), f0
