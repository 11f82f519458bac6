"""Configs of ``downstream stylegan`` and ``downstream invert`` (registered in
:data:`downstream.config.CONFIGS`). CPU-sized defaults; GPU-scale settings in the YAML comments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from backbone_ssl.config import check_choice, check_positive
from backbone_ssl.errors import UserError
from downstream.config import (
    CONFIGS,
    MetricsConfig,
    TaskOptimConfig,
    TaskTrainerConfig,
    _check_common,
    _power_side,
)

MASK_KINDS = ("none", "box")


@dataclass
class StyleTrainer(TaskTrainerConfig):
    resume: bool = False  # continue RUN/checkpoints/last.ckpt up to max_steps


@dataclass
class StyleData:
    path: Optional[str] = None
    batch_size: int = 16
    num_workers: int = 0
    image_size: int = 32  # generator resolution (4 x a power of two)
    resize_to_encoder: bool = False  # metrics encoder at another size: resize (else refuse)
    max_images: Optional[int] = None


@dataclass
class StyleModel:
    z_dim: int = 64
    w_dim: int = 64
    mapping_layers: int = 2  # 8 in the paper
    mapping_lr_mul: float = 0.01
    channels: int = 32  # synthesis / D width per resolution (512 in the paper)
    mixing_prob: float = 0.9
    ema_beta: float = 0.99  # per batch; 0.999 at GPU scale
    w_avg_beta: float = 0.995


@dataclass
class StyleLoss:
    r1_gamma: float = 1.0  # R1 weight (gamma); 10 at 256px in the paper
    r1_every: int = 4  # lazy R1 (16 in the paper)
    diffaugment: str = "color,translation,cutout"  # "" disables


@dataclass
class StyleMetrics(MetricsConfig):
    """KID / FD / coverage as every face generator measures them (facegan.evaluate)."""

    ref_encoder: Optional[str] = None  # the reference space; null: the --encoder
    truncation: tuple = (1.0, 0.7, 0.5, 0.0)


@dataclass
class StyleGANConfig:
    task: str = "stylegan"
    seed: int = 0
    data: StyleData = field(default_factory=StyleData)
    model: StyleModel = field(default_factory=StyleModel)
    loss: StyleLoss = field(default_factory=StyleLoss)
    optim: TaskOptimConfig = field(default_factory=lambda: TaskOptimConfig(lr=2e-3, beta1=0.0,
                                                                         beta2=0.99))
    trainer: StyleTrainer = field(default_factory=StyleTrainer)
    metrics: StyleMetrics = field(default_factory=StyleMetrics)

    def validate(self) -> None:
        _check_common(self)
        _power_side(self.data.image_size, "data.image_size")
        for k in ("z_dim", "w_dim", "mapping_layers", "channels"):
            check_positive(getattr(self.model, k), f"model.{k}")
        check_positive(self.loss.r1_every, "loss.r1_every")
        if self.metrics.max_eval < 4:
            raise UserError("config key 'metrics.max_eval' must be >= 4")


@dataclass
class InvertData:
    path: Optional[str] = None
    batch_size: int = 16
    num_workers: int = 0
    resize_to_encoder: bool = False  # E / perceptual encoder at another size: resize (else refuse)
    eval_images: int = 16  # held-out faces (seeded) inverted and scored; never seen by E
    max_images: Optional[int] = None


@dataclass
class InvertLoss:
    perceptual_encoder: Optional[str] = None  # frozen domain encoder; null: the --encoder
    perceptual_weight: float = 1.0
    adv_weight: float = 0.05  # E training: non-saturating term from the GAN's D
    domain_weight: float = 2.0  # lambda in ||w - E(G(w))||^2 (optimisation stage)


@dataclass
class InvertOptimise:
    steps: int = 100  # Adam steps over w per image
    lr: float = 0.01


@dataclass
class InvertMask:
    kind: str = "none"  # none | box (--mask box)
    box_fraction: float = 0.5  # side of the centred box / image side


@dataclass
class InvertConfig:
    task: str = "invert"
    seed: int = 0
    generator: Optional[str] = None  # --generator RUN (a `downstream stylegan` run folder)
    data: InvertData = field(default_factory=InvertData)
    loss: InvertLoss = field(default_factory=InvertLoss)
    optimise: InvertOptimise = field(default_factory=InvertOptimise)
    mask: InvertMask = field(default_factory=InvertMask)
    optim: TaskOptimConfig = field(default_factory=lambda: TaskOptimConfig(lr=1e-3, beta1=0.9))
    trainer: TaskTrainerConfig = field(default_factory=TaskTrainerConfig)

    def validate(self) -> None:
        _check_common(self)
        check_choice(self.mask.kind, MASK_KINDS, "mask.kind")
        if not 0.0 < self.mask.box_fraction:
            raise UserError("config key 'mask.box_fraction' must be > 0")
        if self.mask.kind == "box" and self.mask.box_fraction >= 1.0:
            raise UserError(f"mask.box_fraction={self.mask.box_fraction} covers the whole image: "
                            "nothing is left to invert from")
        check_positive(self.data.eval_images, "data.eval_images")
        check_positive(self.optimise.steps, "optimise.steps")


CONFIGS.update(stylegan=StyleGANConfig, invert=InvertConfig)
