"""Supervised identity learning: a timm encoder trained with a cosine-margin classifier.

``--data`` is any labelled identity tree ``ROOT/<identity>/<image>`` (toy ``split/train``, the
iCartoonFace training root, ...). Each image's pooled backbone features ``[B, F]`` go straight into
an additive-angular-margin (ArcFace, Deng et al. 2019, https://arxiv.org/abs/1801.07698) or
additive-cosine-margin (CosFace, Wang et al. 2018, https://arxiv.org/abs/1801.09414) softmax
loss from pytorch-metric-learning. The loss owns the learnable class centres ``W [F, classes]``;
they are trained with the backbone (they are in the optimiser, with weight decay) and dropped from
the export, which is the backbone alone, so the features kNN and linear probes see are the ones
the margin was applied to.

This is what a user holding iCartoonFace's labels would train (the published iCartoonFace anchor,
PaddleClas ResNet50 at Recall@1 83.24%, is supervised metric learning) and the supervised ceiling
beside the self-supervised methods. ``model.weights=ENC`` starts from an exported SSL encoder
(fine-tuning it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss
from torch.utils.data import Dataset, Subset

from backbone_ssl.config import RunConfig, check_choice, check_positive, refuse_view_keys
from backbone_ssl.data.datasets import ImageFolderDataset, resolve_image_root
from backbone_ssl.errors import UserError
from backbone_ssl.methods.supervised import SupervisedMethod, augmented_view

log = logging.getLogger(__name__)

LOSSES = ("arcface", "cosface")


@dataclass
class IdentitySection:
    """Identity-classifier settings."""

    loss: str = "arcface"  # arcface | cosface (pytorch-metric-learning)
    arcface_margin: float = 28.6  # degrees (pml's default = 0.5 rad, the paper's)
    cosface_margin: float = 0.35  # cosine units (the paper's)
    scale: float = 30.0  # logit scale s (paper: 64 for thousands of classes)
    min_scale: float = 0.6  # RandomResizedCrop lower bound (faces: keep most of the face)
    hflip_prob: float = 0.5
    cj_strength: float = 0.2  # brightness / contrast jitter; no hue jitter: colour is identity


@dataclass
class IdentityConfig(RunConfig):
    method: str = "identity"
    identity: IdentitySection = field(default_factory=IdentitySection)

    def validate(self) -> None:
        super().validate()
        i = self.identity
        check_choice(i.loss, LOSSES, "identity.loss")
        check_positive(i.scale, "identity.scale")
        check_positive(i.arcface_margin, "identity.arcface_margin")
        check_positive(i.cosface_margin, "identity.cosface_margin")
        if not 0.0 < i.min_scale <= 1.0:
            raise UserError(f"config key 'identity.min_scale' must be in (0, 1], got {i.min_scale}")
        refuse_view_keys(self)


def margin_loss(cfg: IdentitySection, num_classes: int, embedding_size: int) -> nn.Module:
    """The pytorch-metric-learning loss ``cfg.loss`` (its ``W`` holds the class centres)."""
    if cfg.loss == "arcface":
        return ArcFaceLoss(num_classes, embedding_size, margin=cfg.arcface_margin,
                           scale=cfg.scale)
    return CosFaceLoss(num_classes, embedding_size, margin=cfg.cosface_margin, scale=cfg.scale)


class Identity(SupervisedMethod):
    """Backbone + ArcFace/CosFace classifier over the identities of ``data.path``."""

    name = "identity"
    config_cls = IdentityConfig

    def __init__(self, cfg: IdentityConfig) -> None:
        super().__init__(cfg)
        if not cfg.data.path:
            raise UserError("identity needs labelled data: pass --data ROOT/<identity>/<image>")
        self.images = ImageFolderDataset(resolve_image_root(cfg.data.path),
                                         self.train_transform())
        if self.images.num_classes < 2:
            raise UserError(f"identity: {cfg.data.path} holds {self.images.num_classes} identity "
                            "folder(s); it needs ROOT/<identity>/<image> with at least 2")
        self.criterion = margin_loss(cfg.identity, self.images.num_classes, self.feature_dim)

    @property
    def classes(self) -> list[str]:
        """Identity names; class ``k`` of the loss is ``classes[k]``."""
        return list(self.images.classes)

    def train_transform(self) -> Callable:
        """PIL face -> augmented normalised ``[3,S,S]`` (random resized crop, flip, jitter)."""
        i = self.cfg.identity
        return augmented_view(self.cfg.data.image_size, i.min_scale, i.hflip_prob,
                              {"brightness": i.cj_strength, "contrast": i.cj_strength})

    def train_dataset(self) -> Dataset:
        """``(image [3,S,S], identity)`` for every image (the first ``data.max_images``)."""
        data = self.images
        log.info("identity: %d images of %d identities", len(data), data.num_classes)
        n = self.cfg.data.max_images
        return Subset(data, range(min(n, len(data)))) if n else data

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.criterion]

    def supervised_step(self, x: torch.Tensor, y: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin loss of the features ``[B,F]``; accuracy of the margin-free cosine logits."""
        feats = self.backbone(x)
        loss = self.criterion(feats, y)
        with torch.no_grad():
            acc = (self.criterion.get_logits(feats.detach()).argmax(1) == y).float().mean()
        return loss, acc


__all__ = ["Identity", "IdentityConfig", "IdentitySection", "margin_loss"]
