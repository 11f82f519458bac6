"""Inpainting pretraining: a timm encoder learns to complete masked faces.

The encoder being pretrained is any timm CNN (``model.arch``); a coarse U-Net-style decoder
(Ronneberger et al., 2015) upsamples its multi-scale features (``forward_intermediates``) back to
the image (:mod:`~backbone_ssl.methods.inpaint_decoder`). There is one coarse generator and no
refinement pass (unlike DeepFill, Yu et al., 2018).
Losses: L1 reconstruction, the hole and the valid parts weighted separately, plus an adversarial
loss from a global discriminator (whole completed image) and a local one (the hole's bounding box,
resized), as in Iizuka et al., 2017 (GLCIC) and Li et al., 2017 (Generative Face Completion);
the adversarial loss is ``nonsaturating``, ``hinge`` or ``wgan-gp`` (:mod:`gan_losses`).

Data (``inpaint.source``; :mod:`~backbone_ssl.methods.inpaint_data`):

- ``faces``: any image folder (``--data``, e.g. toy faces); each image gets a random box or
  free-form hole (:class:`~backbone_ssl.methods.masks.MaskGenerator`); a seeded
  ``inpaint.val_fraction`` of the files is held out;
- ``panels``: a ``golden prepare`` output; the last panel of every sequence with its face area as
  the hole; whole books are held out (``inpaint.val_fraction`` of them). A face area covering
  less than ``min_coverage`` or more than ``max_coverage`` of the panel (e.g. a face filling the
  panel) is rescaled about its centre into that range (:func:`masks.fit_box`; counted in
  ``train/mask_rescaled``), so no hole is empty or the whole image;
- ``auto``: ``panels`` when ``--data`` holds ``sequences.json``, else ``faces``.

Images are resized to ``data.image_size`` (so a small face is upscaled: the hole is always a
fraction of the image). Pixel space is [-1, 1]; the decoder ends in ``tanh``. The encoder input
is the ImageNet-normalised image (``DEFAULT_MEAN``/``DEFAULT_STD``, as in the export) with the hole
set to 0, i.e. the normalisation mean colour: a timm backbone has three input channels, so the mask
is not given as a fourth channel. The discriminators see the completion
``mask * output + (1 - mask) * target``.

Training uses Lightning manual optimisation: per batch one discriminator step, then one generator
(encoder + decoder) step. ``trainer.global_step`` counts generator steps only (the discriminator
steps through its plain torch optimiser), so ``trainer.max_steps`` means batches, as for the other
methods. Hence ``16-mixed`` precision (loss scaling) and ``trainer.gradient_clip_val`` are refused;
under DDP use ``trainer.strategy=ddp_find_unused_parameters_true`` (each backward uses only one
side's parameters). Both losses go to the method's non-finite guard on the device
(:class:`~backbone_ssl.methods.support.FiniteLossGuard`), read back only at logging steps, before
each checkpoint and at the end: a NaN/inf loss stops the run naming the loss and its first step,
and ``last.ckpt`` keeps the last good state. Skipped reads and rescaled holes are counted on the
host, before the batch moves to the device.

Held-out metrics, logged to ``metrics.csv`` every ``inpaint.val_every_n_epochs`` epochs and at
the end: ``val/hole_psnr`` (PSNR over hole pixels, [0,1] range, mean over images), ``val/hole_l1``,
``val/ssim`` and ``val/psnr`` (whole completed image, torchmetrics), and the same for the
mean-colour baseline (``val/meanfill_*``: the hole filled with the mean colour of the image's
visible pixels); plus an image grid ``RUN/plots/inpaint_epoch<N>.png`` (rows: masked input,
completion, target).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torchvision.utils import make_grid, save_image

from backbone_ssl.config import RunConfig, refuse_view_keys
from backbone_ssl.data.signed import to_unit
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.image_quality import completion_metrics, masked_mean, mean_fill
from backbone_ssl.io import atomic_path
from backbone_ssl.methods.base import PretrainMethod
from backbone_ssl.methods.inpaint_data import build_datasets, resolve_source
from backbone_ssl.methods.inpaint_decoder import CoarseDecoder
from backbone_ssl.methods.masks import MaskGenerator, mask_boxes
from backbone_ssl.methods.support import plots_dir, should_validate
from backbone_ssl.nn.critics import ConvDiscriminator, crop_boxes
from backbone_ssl.nn.gan_losses import (
    check_gan_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)

log = logging.getLogger(__name__)

SOURCES = ("auto", "faces", "panels")


@dataclass
class InpaintSection:
    """Inpainting settings (sized for 64 px faces on CPU)."""

    source: str = "auto"  # auto | faces | panels (a `golden prepare` output, face area masked)
    val_fraction: float = 0.1  # held out: this fraction of the files (faces) or books (panels)
    val_max_images: int = 256  # held-out images evaluated (evenly spaced), 0 = all
    val_every_n_epochs: int = 1  # held-out metrics + image grid every N epochs and at the end
    grid_images: int = 8  # columns of the per-epoch image grid
    mask_kind: str = "mixed"  # box | free_form | mixed (faces source)
    min_coverage: float = 0.1  # hole fraction of the image, lower bound
    max_coverage: float = 0.5  # hole fraction of the image, upper bound
    max_strokes: int = 3  # free-form masks: 1..max_strokes brush strokes
    stroke_width: list[float] = field(default_factory=lambda: [0.08, 0.2])  # x image side
    hflip_prob: float = 0.5  # training images (and their holes) flipped left-right
    decoder_width: int = 16  # decoder channels at full resolution (x2 per halving, <= 8x)
    disc_width: int = 32  # first discriminator layer channels (x2 per layer, <= 8x)
    local_size: int = 32  # the local discriminator's input: the hole's box resized to this
    gan_loss: str = "hinge"  # nonsaturating | hinge | wgan-gp
    gp_weight: float = 10.0  # wgan-gp only
    adv_weight: float = 0.01  # adversarial term in the generator loss (global + local)
    l1_hole_weight: float = 1.0  # mean L1 over hole pixels
    l1_valid_weight: float = 0.5  # mean L1 over visible pixels
    disc_lr: float = 2e-4  # Adam, constant
    disc_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])


@dataclass
class InpaintConfig(RunConfig):
    method: str = "inpaint"
    inpaint: InpaintSection = field(default_factory=InpaintSection)

    def validate(self) -> None:
        super().validate()
        refuse_view_keys(self)
        p = self.inpaint
        if p.source not in SOURCES:
            raise UserError(f"config key 'inpaint.source' must be one of {', '.join(SOURCES)}, "
                            f"got '{p.source}'")
        check_gan_loss(p.gan_loss)
        self.mask_generator()
        for key in ("gp_weight", "adv_weight", "l1_hole_weight", "l1_valid_weight"):
            if getattr(p, key) < 0:
                raise UserError(f"config key 'inpaint.{key}' must be >= 0")
        if p.l1_hole_weight + p.l1_valid_weight + p.adv_weight <= 0:
            raise UserError("inpaint: every loss weight is 0; set inpaint.l1_hole_weight > 0")
        if not 0.0 < p.val_fraction < 1.0:
            raise UserError(f"config key 'inpaint.val_fraction' must be in (0, 1), "
                            f"got {p.val_fraction}")
        if len(p.disc_betas) != 2:
            raise UserError("config key 'inpaint.disc_betas' takes two numbers [beta1, beta2]")
        if self.trainer.precision in ("16-mixed", "16"):
            raise UserError("inpaint does not support trainer.precision=16-mixed (the "
                            "discriminator step bypasses loss scaling); use bf16-mixed or 32-true")
        if self.trainer.gradient_clip_val is not None:
            raise UserError("inpaint uses manual optimisation: trainer.gradient_clip_val is not "
                            "supported; leave it null")
        if self.trainer.strategy in ("ddp", "ddp_spawn"):
            raise UserError("inpaint under DDP needs trainer.strategy="
                            "ddp_find_unused_parameters_true (each backward uses one side's "
                            "parameters only)")
        if self.data.image_size < 16:
            raise UserError("inpaint needs data.image_size >= 16 (SSIM uses an 11 px window)")

    def mask_generator(self) -> MaskGenerator:
        p = self.inpaint
        if len(p.stroke_width) != 2:
            raise UserError("config key 'inpaint.stroke_width' takes two numbers [min, max]")
        try:
            return MaskGenerator(p.mask_kind, p.min_coverage, p.max_coverage, p.max_strokes,
                                 (float(p.stroke_width[0]), float(p.stroke_width[1])))
        except UserError as exc:
            raise UserError(f"inpaint config: {exc}") from None


# ---- the method ---------------------------------------------------------------------------------
class Inpaint(PretrainMethod):
    """Masked-region completion with a timm encoder + coarse decoder + global/local critics."""

    name = "inpaint"
    config_cls = InpaintConfig

    def __init__(self, cfg: InpaintConfig) -> None:
        super().__init__(cfg)
        self.automatic_optimization = False
        p, size = cfg.inpaint, cfg.data.image_size
        final, skips = self._probe_features(size)
        reductions = [max(1, round(size / s.shape[-1])) for s in skips]
        self.decoder = CoarseDecoder(final.shape[1], [s.shape[1] for s in skips], reductions,
                                     p.decoder_width)
        self.global_disc = ConvDiscriminator(size, width=p.disc_width)
        self.local_disc = ConvDiscriminator(p.local_size, width=p.disc_width)
        self.register_buffer("mean", torch.tensor(DEFAULT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(DEFAULT_STD).view(1, 3, 1, 1), persistent=False)
        self.val_set: Dataset | None = None
        self._val_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.mask_rescaled = 0

    def _probe_features(self, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One dummy forward: the backbone's final map and its intermediate maps."""
        arch = self.cfg.model.arch
        if not hasattr(self.backbone, "forward_intermediates"):
            raise UserError(f"model.arch '{arch}' has no forward_intermediates in timm; inpaint "
                            "needs a CNN with multi-scale features (e.g. resnet18)")
        self.backbone.eval()
        try:
            with torch.no_grad():
                final, skips = self.backbone.forward_intermediates(torch.zeros(1, 3, size, size))
        except Exception as exc:  # timm raises various errors for unsupported models
            raise UserError(f"model.arch '{arch}' cannot give multi-scale features at "
                            f"{size} px for inpaint: {exc}") from None
        finally:
            self.backbone.train()
        if final.dim() != 4 or not skips or any(s.dim() != 4 for s in skips):
            raise UserError(f"model.arch '{arch}' gives no [B,C,H,W] feature maps (a ViT?); "
                            "inpaint needs a CNN backbone, e.g. resnet18 or tf_efficientnet_b0")
        return final, list(skips)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # Lightning warns that manual-optimisation checkpoints hold the state after the step:
        # that is the state we want (as with automatic optimisation), so silence that one warning
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")

    # ---- data ----
    def train_dataset(self) -> Dataset:
        """Training holes; also builds the held-out set (:attr:`val_set`)."""
        train, self.val_set = build_datasets(self.cfg)
        log.info("inpaint (%s): %d training and %d held-out images", resolve_source(self.cfg),
                 len(train), len(self.val_set))
        return train

    def on_before_batch_transfer(self, batch: dict[str, Any],
                                 dataloader_idx: int) -> dict[str, Any]:
        """Count skipped reads and rescaled holes while the batch is still on the host (no device
        sync in the training step)."""
        self.skipped_images += int(batch["skipped"].sum())
        self.mask_rescaled += int(batch["rescaled"].sum())
        return batch

    # ---- generator ----
    def encoder_input(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [-1,1] + ``[B,1,H,W]`` holes -> normalised input, hole set to 0."""
        x = (to_unit(images) - self.mean) / self.std
        return x * (1.0 - masks)

    def complete(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Raw generator output ``[B,3,H,W]`` in [-1, 1] for masked ``images``."""
        final, skips = self.backbone.forward_intermediates(self.encoder_input(images, masks))
        return self.decoder(final, skips, images.shape[-2:])

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.decoder]

    def configure_optimizers(self):
        base = super().configure_optimizers()  # the encoder + decoder, with the lr schedule
        p = self.cfg.inpaint
        disc = torch.optim.Adam([*self.global_disc.parameters(), *self.local_disc.parameters()],
                                lr=p.disc_lr, betas=(p.disc_betas[0], p.disc_betas[1]))
        return [base["optimizer"], disc], [base["lr_scheduler"]]

    # ---- losses ----
    def critic_scores(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
        """``(global [B], local [B])`` scores of completed images and their hole boxes."""
        local = crop_boxes(images, boxes, self.cfg.inpaint.local_size)
        return self.global_disc(images), self.local_disc(local)

    def discriminator_step_loss(self, real: torch.Tensor, fake: torch.Tensor,
                                boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, gradient penalty)`` of both critics on ``real`` vs detached ``fake``."""
        p = self.cfg.inpaint
        fake = fake.detach()
        rg, rl = self.critic_scores(real, boxes)
        fg, fl = self.critic_scores(fake, boxes)
        loss = discriminator_loss(p.gan_loss, rg, fg) + discriminator_loss(p.gan_loss, rl, fl)
        gp = torch.zeros((), device=real.device)
        if p.gan_loss == "wgan-gp":
            size = p.local_size
            gp = (gradient_penalty(self.global_disc, real, fake)
                  + gradient_penalty(self.local_disc, crop_boxes(real, boxes, size),
                                     crop_boxes(fake, boxes, size)))
            loss = loss + p.gp_weight * gp
        return loss, gp

    def reconstruction_loss(self, out: torch.Tensor, target: torch.Tensor,
                            masks: torch.Tensor) -> torch.Tensor:
        """Weighted L1: ``l1_hole_weight`` x mean over the hole + ``l1_valid_weight`` x mean over
        the visible pixels (each a per-image mean, averaged over the batch)."""
        p = self.cfg.inpaint
        err = (out - target).abs()
        hole = masked_mean(err, masks).mean()
        valid = masked_mean(err, 1.0 - masks).mean()
        return p.l1_hole_weight * hole + p.l1_valid_weight * valid

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        p = self.cfg.inpaint
        images, masks = batch["image"], batch["mask"]
        opt_g, opt_d = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        out = self.complete(images, masks)
        comp = masks * out + (1.0 - masks) * images
        boxes = mask_boxes(masks)

        # discriminators: one step through the plain torch optimiser (global_step unchanged)
        d_loss, gp = torch.zeros((), device=images.device), torch.zeros((), device=images.device)
        if p.adv_weight > 0:
            self.toggle_optimizer(opt_d)
            d_loss, gp = self.discriminator_step_loss(images, comp, boxes)
            self.loss_guard.observe(d_loss, step, "discriminator loss")  # no host sync
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.optimizer.step()
            self.untoggle_optimizer(opt_d)

        # generator (encoder + decoder): counts as the training step
        self.toggle_optimizer(opt_g)
        l1 = self.reconstruction_loss(out, images, masks)
        adv = torch.zeros((), device=images.device)
        if p.adv_weight > 0:
            sg, sl = self.critic_scores(comp, boxes)
            adv = generator_loss(p.gan_loss, sg) + generator_loss(p.gan_loss, sl)
        loss = l1 + p.adv_weight * adv
        self.loss_guard.observe(loss, step, "generator loss")  # read back at logging steps
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        sched.step()
        self.untoggle_optimizer(opt_g)

        bs = images.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log("train/l1", l1.detach(), batch_size=bs)
        self.log("train/adv", adv.detach(), batch_size=bs)
        self.log("train/d_loss", d_loss.detach(), batch_size=bs)
        if p.gan_loss == "wgan-gp":
            self.log("train/gp", gp.detach(), batch_size=bs)
        self.log("train/lr", opt_g.param_groups[0]["lr"], batch_size=bs)
        self.log("train/skipped_images", float(self.skipped_images), batch_size=bs,
                 reduce_fx="max")
        self.log("train/mask_rescaled", float(self.mask_rescaled), batch_size=bs, reduce_fx="max")
        return loss.detach()

    # ---- held-out evaluation ----
    def held_out_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images ``[N,3,S,S]`` and fixed holes ``[N,1,S,S]`` (loaded once; at most
        ``val_max_images``, evenly spaced)."""
        if self._val_cache is None:
            if self.val_set is None:
                self.val_set = build_datasets(self.cfg)[1]
            n, cap = len(self.val_set), self.cfg.inpaint.val_max_images
            idx = range(n) if cap <= 0 or n <= cap else torch.linspace(0, n - 1, cap).long()
            items = [self.val_set[int(i)] for i in idx]
            self._val_cache = (torch.stack([it["image"] for it in items]),
                               torch.stack([it["mask"] for it in items]))
        return self._val_cache

    @torch.no_grad()
    def evaluate_held_out(self) -> tuple[dict[str, float], torch.Tensor]:
        """Held-out metrics of the model and of the mean-fill baseline, and a ``[3n,3,S,S]`` grid
        (masked inputs, completions, targets) of the first ``grid_images``."""
        images, masks = self.held_out_batch()
        modules = [self.backbone, self.decoder]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        sums: dict[str, float] = {}
        first = None
        try:
            for start in range(0, len(images), self.cfg.data.batch_size):
                x = images[start:start + self.cfg.data.batch_size].to(self.device)
                m = masks[start:start + self.cfg.data.batch_size].to(self.device)
                comp = m * self.complete(x, m) + (1.0 - m) * x
                target, ours, base = to_unit(x), to_unit(comp), to_unit(mean_fill(x, m))
                for prefix, pred in (("val/", ours), ("val/meanfill_", base)):
                    for name, vals in completion_metrics(pred, target, m).items():
                        sums[prefix + name] = sums.get(prefix + name, 0.0) + float(vals.sum())
                if first is None:
                    k = self.cfg.inpaint.grid_images
                    shown = to_unit(x[:k]) * (1.0 - m[:k]) + m[:k]  # holes shown white
                    first = torch.cat([shown, ours[:k], target[:k]]).cpu()
        finally:
            for mod, mode in zip(modules, modes):
                mod.train(mode)
        return {k: v / len(images) for k, v in sums.items()}, first

    def on_train_epoch_end(self) -> None:
        if not should_validate(self.trainer, self.cfg.inpaint.val_every_n_epochs):
            return
        metrics, grid = self.evaluate_held_out()
        for key, value in metrics.items():
            self.log(key, value, sync_dist=True)  # every rank computed the same value
        if self.trainer.is_global_zero:
            out = plots_dir(self.trainer) / f"inpaint_epoch{self.current_epoch}.png"
            nrow = grid.shape[0] // 3
            with atomic_path(out) as tmp:
                save_image(make_grid(grid, nrow=nrow, padding=2, pad_value=1.0), tmp, format="png")


__all__ = ["Inpaint", "InpaintConfig", "InpaintSection"]
