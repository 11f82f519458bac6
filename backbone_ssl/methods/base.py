"""The base LightningModules every pretraining method subclasses (solo-learn style).

- :class:`PretrainMethod` owns what every method shares: the timm backbone (``model.weights``),
  the optimiser with lightly's linear-warm-up + cosine schedule (per step), lr scaling,
  ``trainer.channels_last``, the skipped-image counter, the non-finite-loss guard
  (:attr:`PretrainMethod.loss_guard`: checked on the device every step, read back only at logging
  steps, before each checkpoint and at the end), and the *network contract*: which
  backbone ``export.network`` / ``export --network`` names (``teacher`` or ``student``), the one
  that is exported and that the online kNN monitor measures (:attr:`PretrainMethod.networks`).
- :class:`SSLMethod` (dino, byol, the other lightly methods): augmented views of unlabelled
  images; a method file adds its heads, :meth:`SSLMethod.train_transform` and
  :meth:`SSLMethod.ssl_step`; the base adds the EMA momentum schedule, the collapse monitor and
  the non-finite-loss guard.
- :class:`SupervisedMethod` (person, identity): labelled ``(image, label)`` batches; a method file
  adds its head/loss, :meth:`SupervisedMethod.train_transform` (one view) and
  :meth:`SupervisedMethod.supervised_step`.
- Methods with their own loop (inpaint: encoder-decoder + critics, manual optimisation) subclass
  :class:`PretrainMethod` and implement ``train_dataset`` and ``training_step`` themselves.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn
from lightly.loss import KoLeoLoss
from lightly.models.utils import get_weight_decay_parameters
from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import Dataset

from backbone_ssl.backbones import create_backbone, num_features
from backbone_ssl.config import RunConfig, SSLConfig, to_dict
from backbone_ssl.data.context_swap import context_swap
from backbone_ssl.data.datasets import ImageFolderDataset, PretrainViews, resolve_image_root
from backbone_ssl.errors import UserError
from backbone_ssl.methods.support import (
    FiniteLossGuard,
    NonFiniteLossError,  # noqa: F401 - re-exported: cli, checkpointing, search import it here
)

log = logging.getLogger(__name__)


def load_initial_weights(backbone: nn.Module, source: str) -> None:
    """Start from local weights (``model.weights``): an exported encoder folder or a
    ``.safetensors`` file with timm key names; mismatched keys are named in a UserError."""
    from pathlib import Path

    from backbone_ssl.export import load_encoder_bundle, load_state_strict, read_safetensors

    path = Path(source)
    if path.is_dir():
        state = load_encoder_bundle(path).module.state_dict()
    elif path.is_file():
        state = read_safetensors(path)
    else:
        raise UserError(f"config key 'model.weights': {source} not found")
    load_state_strict(backbone, state, str(path))


#: the values ``export.network`` and ``export --network`` take
NETWORK_CHOICES = ("teacher", "student")


class PretrainMethod(pl.LightningModule):
    """Shared base of every method: backbone + optimiser + schedule + network contract.

    Subclasses set :attr:`name`, :attr:`config_cls`, build their heads in ``__init__`` and
    implement :meth:`train_dataset` and ``training_step`` (or subclass :class:`SSLMethod` /
    :class:`SupervisedMethod`, which implement them).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[RunConfig]] = RunConfig
    #: network name (``teacher`` | ``student``) -> attribute holding that network's timm backbone.
    #: ``student`` is the network the optimiser trains (BYOL's online network); ``teacher`` is an
    #: EMA copy, where a method has one. A name missing here is refused (exit 2).
    networks: ClassVar[dict[str, str]] = {"student": "backbone"}

    @classmethod
    def network_attr(cls, network: str, where: str = "config key 'export.network'") -> str:
        """The attribute holding ``network``'s backbone; UserError naming the valid choices."""
        if network not in cls.networks:
            valid = " or ".join(f"'{n}'" for n in cls.networks)
            kind = ("is not one of teacher, student" if network not in NETWORK_CHOICES
                    else f"does not exist for method '{cls.name}'")
            raise UserError(f"{where}: network '{network}' {kind}; choose {valid}")
        return cls.networks[network]

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # plain python containers only: the checkpoint must load with weights_only=True
        self.save_hyperparameters({"config": to_dict(cfg)})
        self.backbone = create_backbone(cfg.model.arch)
        if cfg.model.weights:
            load_initial_weights(self.backbone, cfg.model.weights)
        self.skipped_images = 0
        #: training steps call ``self.loss_guard.observe(loss, self.global_step, what)``
        self.loss_guard = FiniteLossGuard()
        self.network_attr(cfg.export.network)  # refuse a network this method lacks, up front

    def network_backbone(self, network: str | None = None) -> nn.Module:
        """The backbone of ``network`` (default ``export.network``): exported, and measured by
        the online kNN monitor."""
        return getattr(self, self.network_attr(network or self.cfg.export.network))

    # ---- to implement -------------------------------------------------------------------
    # ---- collapse monitor hooks (monitors.CollapseMonitor; a new method adds its own) ----------
    def collapse_value(self) -> float | None:
        """The loss a collapsed (constant) output gives, or None when no such value exists.

        The monitor calls a loss that sits flat within 0.5% of it after warm-up a collapse.
        DINO returns ``log K`` (uniform teacher), BYOL/SimSiam-style negative cosine losses
        ``-1`` (a constant target is predicted exactly).
        """
        return None

    def collapse_signals(self) -> dict[str, torch.Tensor]:
        """The method's own collapse signals from the last training step, ``{name: scalar
        tensor}`` on the device (e.g. DINO's ``train/teacher_entropy``). Called only at logging
        steps, so computing them here costs nothing on the other steps; logged as given."""
        return {}

    def collapse_advice(self, signal: str) -> str:
        """What to try when ``signal`` (``"loss"`` or ``"std"``) collapsed: one short phrase."""
        return "a lower optim.lr or a shorter optim.warmup_fraction"

    def train_dataset(self) -> Dataset:
        """The training set the run's loader iterates."""
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_losses()  # a diverged state is never written: last.ckpt keeps the good one
        checkpoint["skipped_images"] = int(self.skipped_images)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_images = int(checkpoint.get("skipped_images", 0))

    # ---- non-finite losses (no host sync per step) ------------------------------------------
    def check_losses(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss observed by :attr:`loss_guard` was NaN or
        infinite, naming the first such step (the minimum over DDP processes: every process
        raises at the same point)."""
        trainer = getattr(self, "_trainer", None)
        reduce_min = None
        if trainer is not None and trainer.world_size > 1:
            def reduce_min(t: torch.Tensor) -> torch.Tensor:
                return trainer.strategy.reduce(t, reduce_op="min")
        self.loss_guard.check(reduce_min)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Read the loss guard back at logging steps (``trainer.log_every_n_steps``), when
        Lightning reads the logged metrics back anyway."""
        if self.global_step % max(1, int(self.trainer.log_every_n_steps)) == 0:
            self.check_losses()

    def on_train_end(self) -> None:
        self.check_losses()

    # ---- memory format (trainer.channels_last) ---------------------------------------------
    def on_fit_start(self) -> None:
        if self.cfg.trainer.channels_last:  # parameters keep their identity: optimiser unchanged
            self.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        if self.cfg.trainer.channels_last:  # checkpoints and exports hold contiguous tensors
            self.to(memory_format=torch.contiguous_format)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``trainer.channels_last``, every ``[B,C,H,W]`` tensor of the batch in NHWC."""
        if not self.cfg.trainer.channels_last:
            return batch
        return apply_to_collection(
            batch, torch.Tensor,
            lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t)

    # ---- shared ---------------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return num_features(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> pooled backbone features ``[B, num_features]``."""
        return self.backbone(x)

    @property
    def total_steps(self) -> int:
        """Optimiser steps the whole run will take (Lightning's estimate, >= 1)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return 1
        est = trainer.estimated_stepping_batches
        return max(1, int(est) if math.isfinite(est) else 1)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules the optimiser updates (the student side); EMA copies are excluded."""
        return [self.backbone]

    def lr_multipliers(self) -> dict[nn.Module, float]:
        """Trainable modules whose learning rate is the base lr times a factor (the schedule
        scales every group alike); ``{}``: one lr for all."""
        return {}

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of :meth:`trainable_modules`: weight decay on weights only (lightly's
        split), and a group per :meth:`lr_multipliers` factor."""
        wd = self.cfg.optim.weight_decay
        factors = self.lr_multipliers()
        by_factor: dict[float, list[nn.Module]] = {}
        for module in self.trainable_modules():
            by_factor.setdefault(float(factors.get(module, 1.0)), []).append(module)
        groups = []
        for factor, modules in by_factor.items():
            decay, no_decay = get_weight_decay_parameters(modules)
            groups += [{"params": [p for p in decay if p.requires_grad], "weight_decay": wd,
                        "lr": lr * factor},
                       {"params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0,
                        "lr": lr * factor}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        cfg = self.cfg.optim
        lr = self.scaled_lr()
        groups = self.parameter_groups(lr)
        if cfg.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr)
        else:
            opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
        total = self.total_steps
        warmup = min(int(cfg.warmup_fraction * total), total)
        min_frac = cfg.min_lr_fraction

        def lr_factor(step: int) -> float:
            return cosine_warmup_schedule(
                step=min(step, total), max_steps=total, start_value=1.0, end_value=min_frac,
                warmup_steps=warmup, warmup_start_value=0.0,
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def scaled_lr(self) -> float:
        """``optim.lr`` scaled by effective batch / per-device batch (``optim.lr_scaling``)."""
        cfg = self.cfg.optim
        trainer = getattr(self, "_trainer", None)
        world = trainer.world_size if trainer is not None else 1
        factor = {"none": 1.0, "linear": float(world), "sqrt": math.sqrt(world)}[cfg.lr_scaling]
        return cfg.lr * factor


class SSLMethod(PretrainMethod):
    """Self-supervised methods on augmented views: backbone + heads + EMA schedule + monitors.

    Subclasses set :attr:`name`, :attr:`config_cls`, build their heads in ``__init__`` and
    implement :meth:`train_transform` and :meth:`ssl_step`; a method with an EMA teacher adds
    ``"teacher"`` to :attr:`networks`. Their config is an :class:`~backbone_ssl.config.SSLConfig`
    (``ssl.koleo_weight`` adds lightly's ``KoLeoLoss`` on the backbone features of view 0).
    """

    def __init__(self, cfg: SSLConfig) -> None:
        super().__init__(cfg)
        self.koleo = KoLeoLoss()

    def add_regularisers(self, loss: torch.Tensor, embeddings: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss []`` plus the ``ssl.*`` regularisers of the backbone features ``[B,F]`` of
        view 0; returns ``(total loss, {name: unweighted term})`` (empty when all are off).
        KoLeo: Sablayrolles et al. 2019, as in DINOv2 (Oquab et al. 2023)."""
        terms: dict[str, torch.Tensor] = {}
        weight = self.cfg.ssl.koleo_weight
        if weight > 0:
            terms["koleo"] = self.koleo(embeddings.float())
            loss = loss + weight * terms["koleo"]
        return loss, terms

    # ---- to implement -------------------------------------------------------------------
    def train_transform(self) -> Callable:
        """PIL image -> list of augmented view tensors (a lightly ``*Transform``)."""
        raise NotImplementedError

    def ssl_step(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Views ``V x [B,3,H,W]`` -> ``(loss [], embeddings [B,D])`` (embeddings feed the
        collapse monitor)."""
        raise NotImplementedError

    def train_dataset(self) -> Dataset:
        """The training set: augmented views of every image under ``data.path``.

        Items are ``(views, label, skipped)`` (see :class:`PretrainViews`); methods with another
        kind of data (panels, labels) override this and :meth:`training_step`.
        """
        images = ImageFolderDataset(resolve_image_root(self.cfg.data.path))
        data = self.cfg.data
        if data.sequence_positives > 0:  # faces of nearby panels as positives (golden prepare)
            from backbone_ssl.data.sequence_positives import SequencePairViews

            if not (Path(self.cfg.data.path) / "sequences.json").is_file():
                raise UserError(f"data.sequence_positives needs a `golden prepare` output as "
                                f"--data; {self.cfg.data.path} has no sequences.json")
            self.sequence_views = SequencePairViews(images, self.train_transform(),
                                                    data.sequence_positives,
                                                    data.sequence_window, data.max_images)
            return self.sequence_views
        if data.cache or data.batch_augment:  # decode once into a memory-mapped uint8 file
            from backbone_ssl.data.cache import CachedImages

            # batched rendering needs one size: squares; otherwise the files' own aspect ratio
            images = CachedImages(images, data.image_size, data.max_images,
                                  num_workers=data.num_workers, square=data.batch_augment)
        if data.batch_augment:  # workers draw parameters; on_after_batch_transfer renders
            from backbone_ssl.data.batch_views import BatchedViews, recipes_from

            self.view_recipes = recipes_from(self.train_transform())
            return BatchedViews(images, self.view_recipes, data.max_images)
        return PretrainViews(images, self.train_transform(), data.max_images)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the batch's skipped (undecodable) reads while it is still on the host: no sync."""
        if isinstance(batch, (list, tuple)) and len(batch) == 3:
            skipped = batch[2]
            self.skipped_images += (int(skipped.sum()) if torch.is_tensor(skipped)
                                    else int(sum(skipped)))
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Render batched views (``data.batch_augment``, on the device), then the base's
        ``trainer.channels_last`` conversion."""
        first = batch[0] if isinstance(batch, (list, tuple)) and batch else None
        if isinstance(first, dict) and "params" in first:
            from backbone_ssl.data.batch_views import render_views

            batch = [render_views(first, self.view_recipes), *batch[1:]]
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def on_train_epoch_start(self) -> None:
        """Sequence positives: re-pick each face's mutual-nearest partner in the current
        embedding (``data.sequence_mutual_nn``), logged as ``train/sequence_pairs``."""
        super().on_train_epoch_start()
        views = getattr(self, "sequence_views", None)
        if views is None or not self.cfg.data.sequence_mutual_nn or self.current_epoch == 0:
            return  # epoch 0: any candidate of the window (no embedding worth trusting yet)
        from backbone_ssl.data.sequence_positives import refresh_partners

        stats = refresh_partners(views, self.backbone, self.cfg.data.image_size, True,
                                 self.device)
        self.sequence_stats = stats
        log.info("sequence positives: %d of %d faces have a mutual partner",
                 stats["with_partner"], stats["faces"])

    def momentum_at(self, start: float, end: float) -> float:
        """EMA momentum for the current step: lightly's cosine schedule from start to end."""
        return cosine_schedule(self.global_step, self.total_steps, start, end)

    def step_generator(self, device: torch.device) -> torch.Generator:
        """A random generator seeded from (``seed``, global step, process rank): randomness drawn
        inside the step (context swap) is the same after a resume as in an uninterrupted run
        (the global torch RNG is not in the checkpoint), and differs between DDP processes."""
        gen = torch.Generator(device=device)
        gen.manual_seed((int(self.cfg.seed) + 1) * 1_000_003 + int(self.global_step) * 7_919
                        + int(self.global_rank))
        return gen

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        views, _labels, _skipped = batch  # skipped: counted in on_before_batch_transfer
        if self.cfg.data.context_swap > 0:
            views = context_swap(views, self.cfg.data.context_swap,
                                 self.cfg.data.context_swap_radius,
                                 generator=self.step_generator(views[0].device))
        loss, embeddings = self.ssl_step(views)
        bs = views[0].shape[0]
        # train/loss and the collapse monitor read the method's own loss (its collapse value is
        # for that loss); the optimiser and the loss guard get the total with the regularisers
        self.method_loss = loss.detach()
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=False)
        loss, terms = self.add_regularisers(loss, embeddings)
        for name, value in terms.items():
            self.log(f"train/{name}", value, batch_size=bs)
        self.loss_guard.observe(loss, self.global_step)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        self.collapse_embeddings = embeddings.detach()  # read by monitors.CollapseMonitor
        self.log("train/skipped_images", float(self.skipped_images), batch_size=bs,
                 reduce_fx="max")
        return loss
