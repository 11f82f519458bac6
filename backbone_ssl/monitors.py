"""Online monitors run during pretraining (Lightning callbacks)."""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from lightly.utils.debug import std_of_l2_normalized

from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.evaluation.features import embed_dataset, load_image_folder
from backbone_ssl.evaluation.knn import knn_classify
from backbone_ssl.evaluation.labels import align_by_name
from backbone_ssl.export import Encoder
from backbone_ssl.methods.support import should_validate

log = logging.getLogger(__name__)


class OnlineKNN(pl.Callback):
    """kNN accuracy of the current backbone on a labelled split, every N epochs and at the end.

    Embeds ``val_train`` (gallery) and ``val_test`` (queries) in eval mode with the backbone that
    gets exported (``export.network``: DINO's teacher, BYOL's online network, ...) and
    logs ``val/knn_top1`` and ``val/knn_top5`` (faiss, cosine, temperature-weighted vote). Every
    process computes it on the same small split, so DDP ranks stay in step.
    """

    def __init__(self, val_train: str, val_test: str, image_size: int, every_n_epochs: int = 1,
                 k: int = 20, t: float = 0.07) -> None:
        self.train_set, _ = load_image_folder(val_train)
        self.test_set, _ = load_image_folder(val_test)
        labels, keep, _ = align_by_name(self.train_set.classes, self.test_set.classes,
                                        self.test_set.labels)
        self.test_set.paths = [self.test_set.paths[i] for i in keep]
        self.test_set.labels = labels.tolist()
        self.image_size = image_size
        self.every = max(1, every_n_epochs)
        self.k, self.t = k, t

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """kNN metrics of the exported network's backbone now (train mode is restored after)."""
        pick = getattr(pl_module, "network_backbone", None)
        backbone = pick() if callable(pick) else pl_module.backbone
        was_training = backbone.training
        enc = Encoder(backbone, "", self.image_size, DEFAULT_MEAN, DEFAULT_STD)
        try:
            gallery = embed_dataset(enc, self.train_set, device=pl_module.device)
            queries = embed_dataset(enc, self.test_set, device=pl_module.device)
        finally:
            backbone.train(was_training)
        return knn_classify(gallery, self.train_set.labels, queries, self.test_set.labels,
                            k=self.k, t=self.t, num_classes=len(self.train_set.classes))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not should_validate(trainer, self.every):
            return
        scores = self.measure(pl_module)
        pl_module.log("val/knn_top1", scores["top1"], sync_dist=False)
        pl_module.log("val/knn_top5", scores["top5"], sync_dist=False)


# ---- collapse monitor --------------------------------------------------------------------------

#: a feature std below this fraction of the healthy level ``1/sqrt(d)`` counts as a collapse
STD_COLLAPSE_FRACTION = 1.0 / 3.0
#: relative tolerance of "the loss sits at its collapse value": ``|loss - c| <= tol * max(1, |c|)``
LOSS_COLLAPSE_TOLERANCE = 0.005
#: logged points in a row that must sit at the collapse value (and be flat) to count
LOSS_COLLAPSE_WINDOW = 3


def healthy_std(dim: int) -> float:
    """Std of l2-normalised ``dim``-d features spread evenly over the sphere: ``1/sqrt(d)``
    (lightly's ``std_of_l2_normalized`` note; SimSiam, Chen & He 2021, Sec. 4.1)."""
    return 1.0 / math.sqrt(max(1, dim))


def loss_collapsed(losses: Sequence[float], collapse_value: float | None,
                   window: int = LOSS_COLLAPSE_WINDOW,
                   tolerance: float = LOSS_COLLAPSE_TOLERANCE) -> bool:
    """Whether the last ``window`` logged losses all sit within ``tolerance`` (relative, at least
    absolute) of ``collapse_value`` -- a flat loss at the value a collapsed output gives."""
    if collapse_value is None or len(losses) < window:
        return False
    tol = tolerance * max(1.0, abs(collapse_value))
    return all(abs(v - collapse_value) <= tol for v in losses[-window:])


def std_collapsed(std: float, dim: int, fraction: float | None = None) -> bool:
    """Whether the feature std is below ``fraction`` (default :data:`STD_COLLAPSE_FRACTION`) of
    the healthy level ``1/sqrt(dim)``."""
    fraction = STD_COLLAPSE_FRACTION if fraction is None else fraction
    return std < fraction * healthy_std(dim)


class CollapseMonitor(pl.Callback):
    """Watches each method's collapse signals and says so once when the run collapses.

    Every logging step (Lightning's ``log_every_n_steps``) it logs, from what the method's last
    training step left on the device (no host sync on other steps):

    - ``train/collapse_std``: std over the batch of the l2-normalised backbone features ``[B,d]``
      and ``train/collapse_std_healthy`` = ``1/sqrt(d)``, its reference level;
    - ``train/loss_collapse_value``: the loss a collapsed output gives
      (:meth:`SSLMethod.collapse_value`, e.g. ``log K`` for DINO, ``-1`` for BYOL);
    - the method's own signals (:meth:`SSLMethod.collapse_signals`, e.g. DINO's
      ``train/teacher_entropy`` and ``train/teacher_student_kl``);
    - ``train/collapsed``: 0, or 1 from the step a collapse was detected on.

    After warm-up (``warmup_fraction`` of the run's steps), a collapse is a loss flat at its
    collapse value (:func:`loss_collapsed`) or a feature std below a third of ``1/sqrt(d)``
    (:func:`std_collapsed`).
    The first one prints ONE warning line naming the signal and what to try
    (:meth:`SSLMethod.collapse_advice`); with ``stop=True`` (``trainer.stop_on_collapse``) the run
    ends there and :attr:`hold_checkpoints` keeps ``last.ckpt`` at the last good state.
    """

    def __init__(self, warmup_fraction: float = 0.1, stop: bool = False) -> None:
        self.warmup_fraction = warmup_fraction
        self.warmup_steps = 0  # set from the run's length at the start of training
        self.stop = stop
        self.losses: list[float] = []
        self.signal: str | None = None  # the signal that collapsed ("loss" | "std"), once seen
        self.step: int | None = None
        self.message: str | None = None
        self.hold_checkpoints = False  # read by FlushingCheckpoint: no write after a stop

    @property
    def collapsed(self) -> bool:
        return self.signal is not None

    def export_meta(self) -> dict[str, Any]:
        """What the exported encoder's ``backbone_ssl`` block records about collapse."""
        if not self.collapsed:
            return {"collapsed": False}
        return {"collapsed": True, "collapse_signal": self.signal, "collapse_step": self.step}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 0
        self.warmup_steps = int(self.warmup_fraction * total)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer._logger_connector.should_update_logs:  # as Lightning's LearningRateMonitor
            return
        device_values: dict[str, torch.Tensor] = {}
        # the method's own loss when it adds regularisers (SSLMethod.method_loss), else the total
        loss = getattr(pl_module, "method_loss", None)
        if loss is None:
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss):
            device_values["train/loss"] = loss.detach().float()
        embeddings = getattr(pl_module, "collapse_embeddings", None)
        dim = 0
        if torch.is_tensor(embeddings) and embeddings.dim() == 2 and embeddings.shape[0] > 1:
            dim = int(embeddings.shape[1])
            device_values["train/collapse_std"] = std_of_l2_normalized(embeddings.float())
        signals = getattr(pl_module, "collapse_signals", None)
        if callable(signals):
            device_values.update({k: v.detach().float() for k, v in signals().items()})
        if not device_values:
            return
        names = list(device_values)
        # the one read-back of this logging step
        values = dict(zip(names, torch.stack([device_values[n].reshape(()) for n in names])
                          .cpu().tolist()))
        bs = int(embeddings.shape[0]) if dim else None
        for name in names:
            if name != "train/loss":  # the method logs its loss itself
                pl_module.log(name, values[name], batch_size=bs)
        cv_fn = getattr(pl_module, "collapse_value", None)
        collapse_value = cv_fn() if callable(cv_fn) else None
        if collapse_value is not None:
            pl_module.log("train/loss_collapse_value", float(collapse_value), batch_size=bs)
        if dim:
            pl_module.log("train/collapse_std_healthy", healthy_std(dim), batch_size=bs)
        step = int(trainer.global_step)
        if step > self.warmup_steps and "train/loss" in values:
            self.losses.append(values["train/loss"])
        if not self.collapsed and step > self.warmup_steps:
            if loss_collapsed(self.losses, collapse_value):
                self._fire(trainer, pl_module, "loss", step,
                           f"the loss has sat at its collapse value {collapse_value:.4g} for "
                           f"{LOSS_COLLAPSE_WINDOW} logging steps (now {self.losses[-1]:.4g})")
            elif dim and std_collapsed(values["train/collapse_std"], dim):
                self._fire(trainer, pl_module, "std", step,
                           f"feature std {values['train/collapse_std']:.4f} is below a third "
                           f"of the healthy 1/sqrt({dim}) = {healthy_std(dim):.4f}")
        pl_module.log("train/collapsed", float(self.collapsed), batch_size=bs, reduce_fx="max")

    def _fire(self, trainer: pl.Trainer, pl_module: pl.LightningModule, signal: str, step: int,
              what: str) -> None:
        self.signal, self.step = signal, step
        advice_fn = getattr(pl_module, "collapse_advice", None)
        advice = advice_fn(signal) if callable(advice_fn) else "try a lower optim.lr"
        stop = "; stopping (trainer.stop_on_collapse=true), last.ckpt keeps the last good " \
               "checkpoint" if self.stop else ""
        self.message = f"collapse at step {step}: {what}; try {advice}{stop}"
        if trainer.is_global_zero:
            log.warning("%s", self.message)
        if self.stop:
            self.hold_checkpoints = True
            trainer.should_stop = True
