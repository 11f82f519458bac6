"""NNCLR: nearest-neighbour contrastive learning (Dwibedi et al., 2021,
https://arxiv.org/abs/2104.14548).

Backbone + ``NNCLRProjectionHead`` + ``NNCLRPredictionHead``; each view's projection is replaced by
its nearest neighbour in a support set (``NNMemoryBankModule``) of past projections, and NT-Xent
pulls the other view's prediction towards that neighbour. The positive is thus another image
that the encoder already finds similar: on a small cartoon set that is often another image of
the same character, which plain instance discrimination never sees. All parts are lightly's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead, NNMemoryBankModule

from backbone_ssl.config import SSLConfig, check_range
from backbone_ssl.methods.base import SSLMethod
from backbone_ssl.methods.simclr import ntxent_collapse_value, simclr_views


@dataclass
class NNCLRSection:
    """NNCLR's own settings (paper widths scaled down; support set sized for small data)."""

    proj_hidden_dim: int = 512  # paper: 2048
    proj_out_dim: int = 128  # paper: 256
    pred_hidden_dim: int = 512  # paper: 4096
    memory_bank_size: int = 1024  # support set (paper: 98304 on ImageNet; <= the data set here)
    temperature: float = 0.1
    min_scale: float = 0.2  # RandomResizedCrop lower bound
    hf_prob: float = 0.5
    cj_strength: float = 0.5


@dataclass
class NNCLRConfig(SSLConfig):
    method: str = "nnclr"
    nnclr: NNCLRSection = field(default_factory=NNCLRSection)

    def validate(self) -> None:
        super().validate()
        check_range(self.nnclr.memory_bank_size, "nnclr.memory_bank_size", 1)
        check_range(self.nnclr.temperature, "nnclr.temperature", 0, low_open=True)


class NNCLR(SSLMethod):
    """NNCLR on any timm backbone."""

    name = "nnclr"
    config_cls = NNCLRConfig

    def __init__(self, cfg: NNCLRConfig) -> None:
        super().__init__(cfg)
        s = cfg.nnclr
        self.projection_head = NNCLRProjectionHead(self.feature_dim, s.proj_hidden_dim,
                                                   s.proj_out_dim)
        self.prediction_head = NNCLRPredictionHead(s.proj_out_dim, s.pred_hidden_dim,
                                                   s.proj_out_dim)
        self.memory_bank = NNMemoryBankModule(size=(s.memory_bank_size, s.proj_out_dim))
        self.criterion = NTXentLoss(temperature=s.temperature)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head, self.prediction_head]

    def train_transform(self) -> Callable:
        s = self.cfg.nnclr
        return simclr_views(self.cfg.data.image_size, s.min_scale, s.hf_prob, s.cj_strength)

    def collapse_value(self) -> float | None:
        return ntxent_collapse_value(self.cfg.data.batch_size)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``2 x [B,3,H,W]``: projections ``z [B,P]``, predictions ``p [B,P]``; the loss is
        the symmetrised NT-Xent between NN(z_i) (no gradient) and p_j."""
        f0 = self.backbone(views[0])
        z0 = self.projection_head(f0)
        z1 = self.projection_head(self.backbone(views[1]))
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        nn0 = self.memory_bank(z0.detach(), update=False)
        nn1 = self.memory_bank(z1.detach(), update=True)
        loss = 0.5 * (self.criterion(nn0, p1) + self.criterion(nn1, p0))
        return loss, f0
