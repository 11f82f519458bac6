"""VICReg: variance-invariance-covariance regularisation (Bardes et al., 2022,
https://arxiv.org/abs/2105.04906).

Backbone + expander (lightly's ``BarlowTwinsProjectionHead``, as in lightly's VICReg example);
``VICRegLoss``; ``VICRegTransform`` views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.transforms import VICRegTransform

from backbone_ssl.config import SSLConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.methods.base import SSLMethod


@dataclass
class VICRegSection:
    """VICReg's own settings (paper widths scaled down for small CPU runs)."""

    proj_hidden_dim: int = 512  # paper: 8192
    proj_out_dim: int = 512  # paper: 8192
    lambda_param: float = 25.0  # invariance weight
    mu_param: float = 25.0  # variance weight
    nu_param: float = 1.0  # covariance weight
    min_scale: float = 0.2  # RandomResizedCrop lower bound (paper: 0.08; faces are small)
    hf_prob: float = 0.5
    cj_strength: float = 0.5


@dataclass
class VICRegConfig(SSLConfig):
    method: str = "vicreg"
    vicreg: VICRegSection = field(default_factory=VICRegSection)


class VICReg(SSLMethod):
    """VICReg on any timm backbone."""

    name = "vicreg"
    config_cls = VICRegConfig

    def __init__(self, cfg: VICRegConfig) -> None:
        super().__init__(cfg)
        v = cfg.vicreg
        self.projection_head = BarlowTwinsProjectionHead(self.feature_dim, v.proj_hidden_dim,
                                                         v.proj_out_dim)
        self.criterion = VICRegLoss(lambda_param=v.lambda_param, mu_param=v.mu_param,
                                    nu_param=v.nu_param)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]

    def train_transform(self) -> Callable:
        v = self.cfg.vicreg
        return VICRegTransform(
            input_size=self.cfg.data.image_size, min_scale=v.min_scale, hf_prob=v.hf_prob,
            cj_strength=v.cj_strength,
            normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)})

    def collapse_value(self) -> float | None:
        """A constant embedding: no invariance or covariance term, the variance hinge is
        ``1 - sqrt(eps)`` per branch, so ``mu * (1 - sqrt(eps))``."""
        return self.cfg.vicreg.mu_param * (1.0 - math.sqrt(self.criterion.eps))

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        f0 = self.backbone(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.backbone(views[1]))
        return self.criterion(z0, z1), f0
