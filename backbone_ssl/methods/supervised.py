"""The base of supervised pretraining methods (``person``, ``identity``).

A supervised method trains the backbone plus a head on labelled ``(image [B,3,H,W], label [B])``
batches; its file adds the head and loss (:meth:`SupervisedMethod.supervised_step`), the one-view
:meth:`SupervisedMethod.train_transform` and :meth:`~PretrainMethod.train_dataset`. It has one
network, the trained one (``export.network: student``); the export is the backbone alone.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torchvision.transforms as T

from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.methods.base import PretrainMethod


def augmented_view(size: int, min_scale: float, hflip_prob: float,
                   jitter: dict[str, float]) -> Callable:
    """The one-view training transform of the supervised methods: PIL -> normalised
    ``[3,size,size]`` (toolkit mean/std) after a random resized crop (bicubic, area in
    ``[min_scale, 1]``), a horizontal flip and, when any factor of ``jitter`` (``ColorJitter``
    keyword arguments) is > 0, colour jitter."""
    ops: list[Callable] = [
        T.RandomResizedCrop(size, scale=(min_scale, 1.0),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(hflip_prob),
    ]
    if any(v > 0 for v in jitter.values()):
        ops.append(T.ColorJitter(**jitter))
    ops += [T.ToTensor(), T.Normalize(list(DEFAULT_MEAN), list(DEFAULT_STD))]
    return T.Compose(ops)


class SupervisedMethod(PretrainMethod):
    """Backbone + head trained on labels; logs ``train/loss``, ``train/acc`` and ``train/lr``."""

    def train_transform(self) -> Callable:
        """PIL image -> one augmented, normalised ``[3,S,S]`` tensor."""
        raise NotImplementedError

    def supervised_step(self, x: torch.Tensor, y: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``[B,3,H,W]``, labels ``[B]`` -> ``(loss [], accuracy [])`` (both tensors:
        no host sync)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, acc = self.supervised_step(x, y)
        self.loss_guard.observe(loss, self.global_step)  # read back at logging steps
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/acc", acc, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        return loss
