"""What the face autoencoding models (``downstream bigan``, ``vaegan``, ``introvae``) share:
the face encoder E (an exported encoder, fine-tuned, plus a linear head to the latent), the
module holding E and the DCGAN generator G (sampling, reconstruction, the critic-then-E+G step),
resume checks, the reconstruction grid and the common run skeleton.

Images are ``[B,3,S,S]`` in [-1, 1]; latents ``[B,L]``. KL and the reparameterisation trick live
in :mod:`downstream.sequence` (one home) and are re-exported here for the VAE models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
import torch
import torch.nn as nn
import yaml

from backbone_ssl.errors import UserError
from backbone_ssl.export import Encoder
from backbone_ssl.nn.training import critic_loss, generator_step, train_critic
from backbone_ssl.runlog import truncate_metrics
from downstream.encoder import EncoderInput
from downstream.gan import DCGANGenerator
from downstream.runs import save_image_grid
from downstream.sequence import kl_divergence, kl_per_sample, reparameterise

__all__ = ["FaceEncoder", "LatentFaceModel", "check_resume", "kl_divergence", "kl_per_sample",
           "reconstruction_grid", "reparameterise"]


class FaceEncoder(nn.Module):
    """E: face ``[B,3,S,S]`` in [-1, 1] -> ``z [B,L]`` (``variational=False``) or
    ``(mu, logvar)`` each ``[B,L]`` (``variational=True``).

    The exported encoder (its weights as exported, or ``random:<arch>``) behind its input adapter,
    fine-tuned when ``finetune`` (else frozen, only the head trains), then a linear head from its
    pooled features to ``L`` (or ``2L`` for mean and log-variance).
    """

    def __init__(self, encoder: Encoder, latent_dim: int, *, variational: bool,
                 finetune: bool = True, resize: bool = False) -> None:
        super().__init__()
        self.features = EncoderInput(encoder, finetune=finetune, resize=resize)
        self.variational = variational
        self.latent_dim = latent_dim
        self.head = nn.Linear(self.features.num_features, latent_dim * (2 if variational else 1))

    def forward(self, x: torch.Tensor):
        h = self.head(self.features(x))
        if not self.variational:
            return h
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def param_groups(self, lr: float, encoder_lr: float) -> list[dict]:
        """Adam groups: the pretrained backbone at ``encoder_lr`` (when fine-tuned), the head
        at ``lr``."""
        groups = [{"params": list(self.head.parameters()), "lr": lr}]
        backbone = [p for p in self.features.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": encoder_lr})
        return groups


class LatentFaceModel(pl.LightningModule):
    """E (:class:`FaceEncoder`) and the DCGAN generator G of a face model, trained with manual
    optimisation; the task adds its critic and losses.

    ``cfg`` has ``model.latent_dim``, ``model.gen_channels``, ``model.finetune_encoder``,
    ``data.image_size``, ``data.resize_to_encoder``, ``optim`` and ``loss``.
    """

    def __init__(self, cfg: Any, encoder: Encoder, *, variational: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        m, d = cfg.model, cfg.data
        self.encoder = FaceEncoder(encoder, m.latent_dim, variational=variational,
                                   finetune=m.finetune_encoder, resize=d.resize_to_encoder)
        self.generator = DCGANGenerator(m.latent_dim, d.image_size, m.gen_channels)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` faces ``[n,3,S,S]`` from ``z ~ N(0, I)``."""
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator).to(self.device)
        return self.generator(z)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``G(E(x))`` ``[B,3,S,S]``; a variational E gives its posterior mean (no sampling)."""
        z = self.encoder(x)
        return self.generator(z[0] if self.encoder.variational else z)

    def critic_then_encoder_generator(
        self, batch, draw: Callable[[torch.Tensor], tuple[Any, Any]],
        eg_loss: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        """One training step: ``loss.n_critic`` critic steps, each on its own chunk of the batch
        (``draw(chunk) -> (real, fake)`` critic inputs, made without gradients), then one E+G
        step on ``eg_loss(first chunk)`` with the critic frozen. Logs ``train/d_loss`` and
        ``train/eg_loss``. Needs ``self.discriminator`` and :meth:`critic_optimizers`."""
        lo = self.cfg.loss
        reals = batch[0].chunk(lo.n_critic)
        opt_eg, opt_d = self.optimizers()
        d = self.discriminator

        def draw_chunk(i: int):
            with torch.no_grad():
                return draw(reals[i])

        d_loss = train_critic(opt_d, len(reals), draw_chunk,
                              lambda r, f: critic_loss(lo.gan, d, r, f, lo.gp_weight,
                                                       lo.r1_weight), self.manual_backward)
        g_loss = generator_step(opt_eg, lambda: eg_loss(reals[0]), [opt_d], self.manual_backward)
        self.log_dict({"train/d_loss": d_loss, "train/eg_loss": g_loss}, prog_bar=True)

    def critic_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam for E+G (G and E's head at ``optim.lr``, a fine-tuned backbone at
        ``optim.encoder_lr``) and Adam for ``self.discriminator`` at ``optim.lr``."""
        o = self.cfg.optim
        kw = {"betas": (o.beta1, o.beta2), "weight_decay": o.weight_decay}
        eg = [{"params": list(self.generator.parameters()), "lr": o.lr},
              *self.encoder.param_groups(o.lr, o.encoder_lr)]
        return [torch.optim.Adam(eg, **kw),
                torch.optim.Adam(self.discriminator.parameters(), lr=o.lr, **kw)]


#: model keys that must match between a run folder and the config that resumes it
SHAPE_KEYS = ("latent_dim", "gen_channels", "disc_channels")


def check_resume(run_dir: str | Path, cfg: Any) -> Path:
    """The checkpoint to resume ``cfg`` from in ``run_dir``, or a UserError (one line) when the
    folder is not a run of this task, has no checkpoint, or was trained with another latent size,
    width or ``loss.n_critic`` (its weights or step count would not fit). Drops the
    ``metrics.csv`` rows logged after the checkpoint's step, so the curves continue it."""
    run = Path(run_dir)
    saved, ckpt = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    if not saved.is_file() or not ckpt.is_file():
        raise UserError(f"--resume: {run} is not a finished downstream {cfg.task} run (no "
                        "config.yaml and checkpoints/last.ckpt there)")
    old = yaml.safe_load(saved.read_text()) or {}
    if old.get("task") != cfg.task:
        raise UserError(f"--resume: {run} is a run of task '{old.get('task')}', not "
                        f"'{cfg.task}'")
    for key in SHAPE_KEYS:
        if not hasattr(cfg.model, key):  # e.g. IntroVAE has no discriminator
            continue
        was, now = (old.get("model") or {}).get(key), getattr(cfg.model, key)
        if was != now:
            raise UserError(f"--resume: {run} was trained with model.{key}={was}, the config "
                            f"asks for {now}: the face model's sizes must match")
    was, now = (old.get("loss") or {}).get("n_critic"), getattr(cfg.loss, "n_critic", None)
    if was != now:  # the step budget is counted in optimiser steps per batch (n_critic + 1)
        raise UserError(f"--resume: {run} was trained with loss.n_critic={was}, the config "
                        f"asks for {now} (loss.gan={cfg.loss.gan}): keep the run's loss")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # metrics.csv rows carry the batch count at logging time (0 .. batches - 1)
    batches = state["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    truncate_metrics(run / "metrics.csv", int(batches) - 1)  # work lost after the checkpoint
    return ckpt


@torch.no_grad()
def reconstruction_grid(reconstruct, real: torch.Tensor, path: Path, device: torch.device,
                        cols: int = 8, pairs: int = 3) -> Path:
    """Rows alternate real faces ``x`` and their reconstructions ``G(E(x))``
    (``reconstruct: [n,3,S,S] -> [n,3,S,S]``) for ``pairs`` rows of ``cols`` faces."""
    x = real[:cols * pairs]
    rec = torch.cat([reconstruct(x[i:i + 64].to(device)).cpu() for i in range(0, len(x), 64)])
    rows = []
    for r in range(0, len(x), cols):
        rows += [list(x[r:r + cols]), list(rec[r:r + cols])]
    return save_image_grid(rows, [], path, caption="odd rows: real x; even rows: G(E(x))")
