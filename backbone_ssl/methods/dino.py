"""DINO: self-distillation with no labels (Caron et al., 2021, https://arxiv.org/abs/2104.14294).

Student = backbone + ``DINOProjectionHead``; teacher = an EMA copy of both. The loss, the centre
(synchronised across DDP processes by lightly), the heads, the multi-crop transform, the momentum
update and the schedules all come from lightly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn as nn
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.dino_transform import DINOTransform
from lightly.utils.scheduler import linear_warmup_schedule

from backbone_ssl.config import DataConfig, ExportConfig, OptimConfig, SSLConfig
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.errors import UserError
from backbone_ssl.methods.base import SSLMethod


@dataclass
class DINOSection:
    """DINO's own settings (paper defaults scaled down for 64 px cartoon faces on CPU)."""

    hidden_dim: int = 512  # projection MLP width (paper: 2048)
    bottleneck_dim: int = 128  # before the weight-normalised last layer (paper: 256)
    output_dim: int = 1024  # prototypes K (paper: 65536)
    batch_norm_head: bool = True  # issue 18: BN head + faster teacher: no collapse
    norm_last_layer: bool = True
    freeze_last_layer_epochs: int = 1  # last layer frozen during the first N epochs
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_fraction: float = 0.3  # fraction of steps for the teacher temp warm-up
    center_momentum: float = 0.9
    # teacher EMA momentum, cosine to momentum_end (paper 0.996 -> 1 over hundreds of epochs; at
    # CPU budgets that teacher stays at its random init and the output goes uniform: issue 18)
    momentum_start: float = 0.95
    momentum_end: float = 0.995
    n_local_views: int = 2  # local crops per image: each costs a forward+backward (CPU: keep low)
    local_crop_size: int = 32
    global_crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.1, 0.4])
    hf_prob: float = 0.5
    rr_prob: float = 0.5  # random rotation (comic faces tilt)
    rr_degrees: float = 20.0
    cj_strength: float = 0.5
    cj_hue: float = 0.04  # hue jitter before x cj_strength (hair and skin colour carry identity)
    cj_sat: float = 0.2  # saturation jitter before x cj_strength (lightly's default 0.4)
    random_gray_scale: float = 0.02  # grey-scale probability (lightly's 0.2; colour is identity)
    gaussian_blur: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])  # p: g1, g2, local
    sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3])  # paper (0.1, 2) is for 224 px
    solarization_prob: float = 0.0


@dataclass
class DINOConfig(SSLConfig):
    method: str = "dino"
    dino: DINOSection = field(default_factory=DINOSection)
    # issue 18 (configs/dino.yaml, docs/COLLAPSE.md): context swap against background matching,
    # and a higher peak lr, measured with the faster teacher above
    data: DataConfig = field(default_factory=lambda: DataConfig(context_swap=0.8))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.003))
    # the paper evaluates the EMA teacher: export it and let the kNN monitor measure it
    export: ExportConfig = field(default_factory=lambda: ExportConfig(network="teacher"))

    def validate(self) -> None:
        super().validate()
        if self.dino.n_local_views < 0:
            raise UserError("config key 'dino.n_local_views' must be >= 0")
        if len(self.dino.global_crop_scale) != 2 or len(self.dino.local_crop_scale) != 2:
            raise UserError("config keys 'dino.*_crop_scale' take two numbers [min, max]")
        if len(self.dino.gaussian_blur) != 3 or len(self.dino.sigmas) != 2:
            raise UserError("config key 'dino.gaussian_blur' takes 3 probabilities and "
                            "'dino.sigmas' two numbers [min, max]")


class DINO(SSLMethod):
    """DINO on any timm backbone."""

    name = "dino"
    config_cls = DINOConfig
    networks = {"teacher": "teacher_backbone", "student": "backbone"}

    def __init__(self, cfg: DINOConfig) -> None:
        super().__init__(cfg)
        d = cfg.dino
        self.student_head = DINOProjectionHead(
            self.feature_dim, d.hidden_dim, d.bottleneck_dim, d.output_dim,
            batch_norm=d.batch_norm_head, freeze_last_layer=d.freeze_last_layer_epochs,
            norm_last_layer=d.norm_last_layer,
        )
        self.teacher_backbone = copy.deepcopy(self.backbone)
        # deepcopy of a weight_norm module fails: build a fresh head and copy the weights
        self.teacher_head = DINOProjectionHead(
            self.feature_dim, d.hidden_dim, d.bottleneck_dim, d.output_dim,
            batch_norm=d.batch_norm_head, norm_last_layer=d.norm_last_layer,
        )
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(
            output_dim=d.output_dim, warmup_teacher_temp=d.warmup_teacher_temp,
            teacher_temp=d.teacher_temp, student_temp=d.student_temp,
            center_momentum=d.center_momentum,
        )

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.student_head]

    def train_transform(self) -> Callable:
        d, size = self.cfg.dino, self.cfg.data.image_size
        return DINOTransform(
            global_crop_size=size, global_crop_scale=tuple(d.global_crop_scale),
            local_crop_size=d.local_crop_size, local_crop_scale=tuple(d.local_crop_scale),
            n_local_views=d.n_local_views, hf_prob=d.hf_prob, rr_prob=d.rr_prob,
            rr_degrees=d.rr_degrees, cj_strength=d.cj_strength, cj_hue=d.cj_hue, cj_sat=d.cj_sat,
            random_gray_scale=d.random_gray_scale,
            gaussian_blur=tuple(d.gaussian_blur), sigmas=tuple(d.sigmas),
            solarization_prob=d.solarization_prob,
            normalize={"mean": list(DEFAULT_MEAN), "std": list(DEFAULT_STD)},
        )

    def teacher_temp_now(self) -> float:
        """Teacher temperature: linear warm-up over a fraction of the steps (lightly schedule)."""
        d = self.cfg.dino
        warm = max(1, int(d.warmup_teacher_temp_fraction * self.total_steps))
        if self.global_step >= warm:
            return d.teacher_temp
        return linear_warmup_schedule(self.global_step, warm, d.warmup_teacher_temp, d.teacher_temp)

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.dino
        m = self.momentum_at(d.momentum_start, d.momentum_end)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.student_head, self.teacher_head, m)
        global_views = views[:2]
        with torch.no_grad():
            teacher_out = [self.teacher_head(self.teacher_backbone(v)) for v in global_views]
        feats = [self.backbone(v) for v in views]
        student_out = [self.student_head(f) for f in feats]
        temp = self.teacher_temp_now()
        center = self.criterion.center.detach().clone()  # the centre this step's loss uses
        loss = self.criterion(teacher_out, student_out, teacher_temp=temp)
        # kept for collapse_signals(), which computes only at logging steps
        self._collapse_state = (torch.stack(teacher_out).detach(), center, temp, loss.detach())
        self.log("train/ema_momentum", m, batch_size=views[0].shape[0])
        return loss, feats[0]

    # ---- collapse monitor hooks (SSLMethod) ---------------------------------------------------
    def collapse_value(self) -> float:
        """``log K``: the cross-entropy when the (centred) teacher is uniform over K prototypes."""
        return math.log(self.cfg.dino.output_dim)

    def collapse_signals(self) -> dict[str, torch.Tensor]:
        """``train/teacher_entropy``: mean entropy of the centred, sharpened teacher softmax
        (``log K`` = uniform collapse, 0 = one-prototype collapse), and
        ``train/teacher_student_kl`` = loss - that entropy: the mean KL(teacher || student) over
        the loss's view pairs (each teacher view enters equally often). DINO paper Sec. 5.3."""
        state = getattr(self, "_collapse_state", None)
        if state is None:
            return {}
        teacher, center, temp, loss = state
        log_p = torch.log_softmax((teacher.float() - center) / temp, dim=-1)  # [2,B,K]
        entropy = -(log_p.exp() * log_p).sum(-1).mean()
        return {"train/teacher_entropy": entropy, "train/teacher_student_kl": loss - entropy}

    def collapse_advice(self, signal: str) -> str:
        if signal == "loss":  # uniform teacher: centring beats sharpening
            return ("dino.batch_norm_head=true, a faster teacher (dino.momentum_start=0.99), "
                    "a lower dino.teacher_temp or a lower optim.lr (docs/COLLAPSE.md)")
        return ("dino.batch_norm_head=true, a lower optim.lr or a higher dino.center_momentum "
                "(docs/COLLAPSE.md)")

    def on_after_backward(self) -> None:
        self.student_head.cancel_last_layer_gradients(current_epoch=self.current_epoch)
