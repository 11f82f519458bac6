"""BYOL: bootstrap your own latent (Grill et al., 2020, https://arxiv.org/abs/2006.07733).

Online network = backbone + ``BYOLProjectionHead`` + ``BYOLPredictionHead``; target network = an
EMA copy of backbone and projection head. Heads, loss (``NegativeCosineSimilarity``), transform,
momentum update and schedule come from lightly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
)

from backbone_ssl.config import SSLConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.errors import UserError
from backbone_ssl.methods.base import SSLMethod


@dataclass
class BYOLSection:
    """BYOL's own settings (paper widths scaled down for small CPU runs)."""

    proj_hidden_dim: int = 1024  # paper: 4096
    proj_out_dim: int = 256
    pred_hidden_dim: int = 1024  # paper: 4096
    # predictor lr = optim.lr x this (SimSiam / DirectPred: a predictor that adapts faster than
    # the encoder keeps the target informative early; 1 = the paper's single lr)
    pred_lr_factor: float = 1.0
    momentum_start: float = 0.99  # target EMA momentum, cosine to momentum_end
    momentum_end: float = 1.0
    min_scale: float = 0.2  # RandomResizedCrop lower bound (paper: 0.08; faces are small)
    hf_prob: float = 0.5
    cj_strength: float = 1.0
    # colour and blur: lightly's BYOL values by default; cartoon colour carries identity, so the
    # CPU recipe (configs/byol_cpu.yaml) turns hue and grey-scale down (benchmarks/RECIPES.md)
    cj_hue: float = 0.1  # hue jitter before x cj_strength
    cj_sat: float = 0.2  # saturation jitter before x cj_strength
    random_gray_scale: float = 0.2  # grey-scale probability, both views
    gaussian_blur: list[float] = field(default_factory=lambda: [1.0, 0.1])  # p: view 1, view 2
    sigmas: list[float] = field(default_factory=lambda: [0.1, 2.0])  # px; paper's, for 224 px
    solarization_prob: float = 0.2  # view 2 only (the paper's asymmetric views)


@dataclass
class BYOLConfig(SSLConfig):
    method: str = "byol"
    byol: BYOLSection = field(default_factory=BYOLSection)

    def validate(self) -> None:
        super().validate()
        if self.byol.pred_lr_factor <= 0:
            raise UserError("config key 'byol.pred_lr_factor' must be > 0, got "
                            f"{self.byol.pred_lr_factor}")
        if len(self.byol.gaussian_blur) != 2 or len(self.byol.sigmas) != 2:
            raise UserError("config key 'byol.gaussian_blur' takes 2 probabilities (view 1, "
                            "view 2) and 'byol.sigmas' two numbers [min, max]")


class BYOL(SSLMethod):
    """BYOL on any timm backbone."""

    name = "byol"
    config_cls = BYOLConfig
    #: the paper keeps the online network (student); the target is its EMA (teacher)
    networks = {"student": "backbone", "teacher": "backbone_momentum"}

    def __init__(self, cfg: BYOLConfig) -> None:
        super().__init__(cfg)
        b = cfg.byol
        self.projection_head = BYOLProjectionHead(self.feature_dim, b.proj_hidden_dim,
                                                  b.proj_out_dim)
        self.prediction_head = BYOLPredictionHead(b.proj_out_dim, b.pred_hidden_dim,
                                                  b.proj_out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection_head, self.prediction_head]

    def lr_multipliers(self) -> dict[nn.Module, float]:
        factor = self.cfg.byol.pred_lr_factor
        return {} if factor == 1.0 else {self.prediction_head: factor}

    def train_transform(self) -> Callable:
        b, size = self.cfg.byol, self.cfg.data.image_size
        norm = {"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)}
        common = dict(input_size=size, min_scale=b.min_scale, hf_prob=b.hf_prob,
                      cj_strength=b.cj_strength, cj_hue=b.cj_hue, cj_sat=b.cj_sat,
                      random_gray_scale=b.random_gray_scale, sigmas=tuple(b.sigmas),
                      normalize=norm)
        blur1, blur2 = b.gaussian_blur
        return BYOLTransform(
            BYOLView1Transform(**common, gaussian_blur=blur1, solarization_prob=0.0),
            BYOLView2Transform(**common, gaussian_blur=blur2,
                               solarization_prob=b.solarization_prob))

    def online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B,3,H,W]`` -> (prediction ``[B,D]``, backbone features ``[B,F]``)."""
        f = self.backbone(x)
        return self.prediction_head(self.projection_head(f)), f

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> target projection ``[B,D]`` (no gradient)."""
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    # ---- collapse monitor hooks (SSLMethod) ---------------------------------------------------
    def collapse_value(self) -> float:
        """``-1``: a constant output lets the predictor match the constant target exactly."""
        return -1.0

    def collapse_advice(self, signal: str) -> str:
        return ("a lower optim.lr, a slower target (byol.momentum_start=0.996) or a wider "
                "byol.pred_hidden_dim (docs/COLLAPSE.md)")

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.cfg.byol
        m = self.momentum_at(b.momentum_start, b.momentum_end)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection_head, self.projection_head_momentum, m)
        x0, x1 = views[0], views[1]
        p0, f0 = self.online(x0)
        p1, _ = self.online(x1)
        z0, z1 = self.target(x0), self.target(x1)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.log("train/ema_momentum", m, batch_size=x0.shape[0])
        return loss, f0
