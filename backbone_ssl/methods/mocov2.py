"""MoCo v2: momentum contrast with an MLP head (He et al., 2020, https://arxiv.org/abs/1911.05722;
Chen et al., 2020, https://arxiv.org/abs/2003.04297).

Query encoder = backbone + ``MoCoProjectionHead``; key encoder = an EMA copy of both (the
"teacher" network, :attr:`MoCoV2.networks` ``teacher``). Negatives come from a queue of past keys:
lightly's ``NTXentLoss(memory_bank_size=...)``. Transform: ``MoCoV2Transform``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform

from backbone_ssl.config import SSLConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.methods.base import SSLMethod


@dataclass
class MoCoV2Section:
    """MoCo v2's own settings (paper sizes scaled down for small CPU runs)."""

    proj_hidden_dim: int = 512  # paper: 2048
    proj_out_dim: int = 128
    temperature: float = 0.2  # paper: 0.2
    memory_bank_size: int = 1024  # queue of negative keys (paper: 65536)
    momentum_start: float = 0.99  # key-encoder EMA momentum, cosine to momentum_end (paper: 0.999)
    momentum_end: float = 1.0
    min_scale: float = 0.2  # RandomResizedCrop lower bound (paper: 0.2)
    hf_prob: float = 0.5
    cj_strength: float = 0.5


@dataclass
class MoCoV2Config(SSLConfig):
    method: str = "mocov2"
    mocov2: MoCoV2Section = field(default_factory=MoCoV2Section)


class MoCoV2(SSLMethod):
    """MoCo v2 on any timm backbone."""

    name = "mocov2"
    config_cls = MoCoV2Config
    #: export.network contract (PretrainMethod.networks): the query encoder is exported by
    #: default, ``export --network teacher`` exports the EMA key encoder
    networks = {"student": "backbone", "teacher": "backbone_momentum"}

    def __init__(self, cfg: MoCoV2Config) -> None:
        super().__init__(cfg)
        m = cfg.mocov2
        self.projection_head = MoCoProjectionHead(self.feature_dim, m.proj_hidden_dim,
                                                  m.proj_out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(temperature=m.temperature,
                                    memory_bank_size=(m.memory_bank_size, m.proj_out_dim))

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head]

    def train_transform(self) -> Callable:
        m = self.cfg.mocov2
        return MoCoV2Transform(
            input_size=self.cfg.data.image_size, min_scale=m.min_scale, hf_prob=m.hf_prob,
            cj_strength=m.cj_strength,
            normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)})

    def collapse_value(self) -> float | None:
        """Not declared: lightly's queue makes the constant-embedding loss depend on its
        contents (measured 0.147, not ``log(1 + size)``, with a queue filled by the constant)."""
        return None

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> key projection ``[B,D]`` from the EMA encoder (no gradient)."""
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.momentum_at(self.cfg.mocov2.momentum_start, self.cfg.mocov2.momentum_end)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        f = self.backbone(views[0])
        query = self.projection_head(f)
        loss = self.criterion(query, self.key(views[1]))  # the keys then enter the queue
        self.log("train/ema_momentum", m, batch_size=f.shape[0])
        return loss, f
