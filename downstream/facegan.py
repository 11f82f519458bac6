"""``downstream gan``: a DCGAN on face crops, its discriminator optionally built on the frozen
encoder's features (a small trainable head on pretrained features, as in Projected GANs, Sauer et
al. 2021), scored with KID and FD against real faces.

Training (:mod:`backbone_ssl.nn.training`): ``loss.n_critic`` critic steps per generator step,
each on fresh real faces and fresh fakes; the critic's parameters are frozen during the generator
step; DiffAugment (``model.diffaugment``, on by default) on every discriminator input; WGAN-GP
defaults Adam(0, 0.9) and 5 critic steps.

With ``model.encoder_in_discriminator=true`` (the default) the encoder is the discriminator's
feature extractor, so comparing encoders at the same budget measures what their features give
a GAN; with ``false`` the discriminator is a plain conv net and the encoder plays no part.
KID and FD are measured in a *separate*, fixed reference encoder (``metrics.ref_encoder``), never
in the encoder under test, and are not Inception KID/FID. ``kid_real`` / ``fd_real`` are the same
metrics between two disjoint sets of real faces of the same size: the floor a perfect generator
would reach.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from backbone_ssl.data.datasets import ImageFolderDataset, resolve_image_root, scan_decodable
from backbone_ssl.data.signed import signed_transform
from backbone_ssl.nn.critics import ConvDiscriminator, CriticEnsemble, ProjectedDiscriminator
from backbone_ssl.nn.diffaugment import AugmentedCritic
from backbone_ssl.nn.gan_losses import generator_loss
from backbone_ssl.nn.training import critic_loss, generator_step, train_critic
from downstream.config import GanConfig
from downstream.encoder import (
    EncoderInput,
    EncoderStages,
    encoder_info,
    load_task_encoder,
    reference_features,
)
from downstream.gan import DCGANGenerator, EncoderFeatureDiscriminator
from downstream.metrics import generator_metrics
from downstream.runs import (
    FD_ENC_NOTE,
    RANDOM_REF_NOTE,
    eval_device,
    fit,
    make_trainer,
    plot_training,
    reference_info,
    save_image_grid,
    seeded_indices,
    start_run,
    write_report,
)

log = logging.getLogger(__name__)


class FaceGAN(pl.LightningModule):
    """Generator + discriminator trained with manual optimisation (``n_critic`` D steps, then one
    G step per batch)."""

    def __init__(self, cfg: GanConfig, discriminator: torch.nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        m = cfg.model
        self.generator = DCGANGenerator(m.latent_dim, cfg.data.image_size, m.gen_channels)
        self.discriminator = discriminator

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` faces ``[n,3,S,S]`` in [-1, 1] from ``z ~ N(0, I)``."""
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator).to(self.device)
        return self.generator(z)

    def training_step(self, batch, batch_idx: int) -> None:
        """``batch[0]``: ``n_critic`` real batches stacked (the loader draws
        ``batch_size x n_critic``), one per critic step, each against fresh fakes; then one
        generator step with the critic's parameters frozen."""
        lo = self.cfg.loss
        reals = batch[0].chunk(lo.n_critic)
        opt_g, opt_d = self.optimizers()
        d = self.discriminator

        def draw(i: int):
            with torch.no_grad():
                return reals[i], self.sample(reals[i].shape[0])

        d_loss = train_critic(opt_d, len(reals), draw,
                              lambda r, f: critic_loss(lo.gan, d, r, f, lo.gp_weight,
                                                       lo.r1_weight), self.manual_backward)
        n = reals[0].shape[0]
        g_loss = generator_step(opt_g, lambda: generator_loss(lo.gan, d(self.sample(n))), [opt_d],
                                self.manual_backward)
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss}, prog_bar=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        kw = {"lr": o.lr, "betas": (o.beta1, o.beta2), "weight_decay": o.weight_decay}
        d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        return [torch.optim.Adam(self.generator.parameters(), **kw),
                torch.optim.Adam(d_params, **kw)]


def face_dataset(cfg: GanConfig) -> ImageFolderDataset:
    """Face crops under ``data.path`` (an image folder, iCartoonFace root or prepare output) as
    ``[3,S,S]`` tensors in [-1, 1]."""
    faces = ImageFolderDataset(resolve_image_root(cfg.data.path),
                               transform=signed_transform(cfg.data.image_size))
    scan_decodable(faces)
    if cfg.data.max_images is not None and cfg.data.max_images < len(faces):
        keep = seeded_indices(len(faces), cfg.data.max_images, cfg.seed)
        faces.paths = [faces.paths[i] for i in keep]
        faces.labels = [faces.labels[i] for i in keep]
    return faces


def build_discriminator(cfg: GanConfig, encoder) -> torch.nn.Module:
    """Encoder features + trainable head, or a plain conv discriminator; either behind
    DiffAugment (``model.diffaugment``), so real, fake and penalty inputs are all augmented."""
    m = cfg.model
    if m.encoder_in_discriminator:
        feats = EncoderInput(encoder, resize=cfg.data.resize_to_encoder)
        if m.projected:
            stages = EncoderStages(feats, m.projected_stages)
            critic = ProjectedDiscriminator(stages, stages.channels, width=m.disc_channels,
                                            normalise=m.projected_normalise,
                                            mixing=m.projected_mixing, seed=cfg.seed,
                                            blur_sigma=m.projected_blur,
                                            minibatch_std=m.projected_mbstd,
                                            spectral_norm=m.projected_sn,
                                            sizes=stages.sizes if m.projected_global else None)
        else:
            critic = EncoderFeatureDiscriminator(feats, encoder.num_features, m.head_hidden)
        if m.pixel_critic:
            critic = CriticEnsemble([critic, ConvDiscriminator(cfg.data.image_size,
                                                               width=m.disc_channels)])
    else:
        critic = ConvDiscriminator(cfg.data.image_size, width=m.disc_channels)
    return AugmentedCritic(critic, m.diffaugment)


def discriminator_name(m) -> str:
    """What :func:`build_discriminator` builds for ``cfg.model``, e.g. ``projected:3+norm+conv``."""
    if not m.encoder_in_discriminator:
        return "conv"
    name = "pooled"
    if m.projected:
        name = (f"projected:{m.projected_stages}" + ("+norm" if m.projected_normalise else "")
                + ("+mix" if m.projected_mixing else "")
                + (f"+blur{m.projected_blur:g}" if m.projected_blur > 0 else "")
                + ("+mbstd" if m.projected_mbstd else "") + ("+sn" if m.projected_sn else "")
                + ("+global" if m.projected_global else ""))
    return name + ("+conv" if m.pixel_critic else "")


def calibrate_critic(critic: torch.nn.Module, faces: ImageFolderDataset, cfg: GanConfig,
                     n: int = 256) -> None:
    """Fix a projected critic's per-stage feature statistics (``model.projected_normalise``)
    from up to ``n`` real faces, drawn with the run's seed; a no-op for the other critics. The
    statistics are buffers, so a resumed run loads the calibrated values with the weights."""
    for module in critic.modules():
        if isinstance(module, ProjectedDiscriminator) and module.normalise:
            idx = seeded_indices(len(faces), min(n, len(faces)), cfg.seed + 3)
            module.calibrate(torch.stack([faces[i][0] for i in idx]))


@torch.no_grad()
def evaluate(model: pl.LightningModule, faces: ImageFolderDataset, cfg,
             device: torch.device) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """KID, FD, coverage and diversity of generated vs real faces and of real vs real (same
    sizes: the floor), in the reference encoder ``cfg.metrics.ref_encoder``. ``model`` is any
    face generator with ``sample(n, generator) -> [n,3,S,S]`` in [-1, 1] (DCGAN, BiGAN, VAE-GAN,
    IntroVAE, StyleGAN), so every one is scored the same way. Returns
    ``(metrics, fake [n,3,S,S], real [n,3,S,S])``."""
    n = min(cfg.metrics.max_eval, len(faces) // 2)
    if n < 2:
        raise ValueError("need at least 4 face images to measure FD-enc")
    log.info("evaluating %d generated vs %d real faces (KID, FD)", n, n)
    idx = seeded_indices(len(faces), 2 * n, cfg.seed + 1)
    np.random.default_rng(cfg.seed + 1).shuffle(idx)
    real = torch.stack([faces[i][0] for i in idx])
    real_a, real_b = real[:n], real[n:2 * n]
    model.eval().to(device)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    fake = torch.cat([model.sample(min(256, n - i), g).cpu() for i in range(0, n, 256)])
    model.cpu()
    ref = reference_features(cfg.metrics.ref_encoder, cfg.metrics.ref_seed,
                             cfg.data.image_size).to(device)
    mc = cfg.metrics
    gen = generator_metrics(ref, fake, real_a, mc.pca_dim, mc.kid_subset_size, mc.kid_subsets)
    floor = generator_metrics(ref, real_b, real_a, mc.pca_dim, mc.kid_subset_size,
                              mc.kid_subsets)
    metrics = {**gen, "kid_real": floor["kid"], "fd_real": floor["fd"],
               "coverage_real": floor["coverage"], "eval_samples": n}
    return metrics, fake, real_a


def run_gan(cfg: GanConfig, encoder_spec: str, run_dir: str) -> dict:
    """Train the face GAN and write the report."""
    d, m = cfg.data, cfg.model
    pl.seed_everything(cfg.seed, workers=True)
    encoder = load_task_encoder(encoder_spec, task_size=d.image_size, what="face crops",
                                size_key="data.image_size",
                                resize=d.resize_to_encoder or not m.encoder_in_discriminator,
                                seed=cfg.seed)
    faces = face_dataset(cfg)
    run = start_run(run_dir, cfg)
    model = FaceGAN(cfg, build_discriminator(cfg, encoder))
    calibrate_critic(model.discriminator, faces, cfg)
    per_step = d.batch_size * cfg.loss.n_critic  # fresh real faces for every critic step
    loader = DataLoader(faces, batch_size=min(per_step, len(faces)), shuffle=True,
                        drop_last=len(faces) > per_step, num_workers=d.num_workers)
    budget = fit(make_trainer(cfg, run, cfg.loss.n_critic + 1), model, loader, cfg, run)
    metrics, fake, real = evaluate(model, faces, cfg, eval_device(cfg))
    plots = plot_training(run, {"loss": ("train/d_loss", "train/g_loss")})
    cols = 8
    rows = [list(real[:cols])] + [list(fake[r * cols:(r + 1) * cols])
                                  for r in range(max(1, cfg.metrics.grid_rows - 1))]
    rows = [r for r in rows if r]
    save_image_grid(rows, [], run / "plots" / "samples.png",
                    caption="top row: real faces; below: generated")
    plots.append("samples.png")
    report = {
        "task": "gan",
        "encoder": encoder_info(encoder_spec, encoder, frozen=True),
        "encoder_in_discriminator": m.encoder_in_discriminator,
        "discriminator": discriminator_name(m),
        "diffaugment": m.diffaugment,
        "data": {"root": str(faces.root), "images": len(faces), "image_size": d.image_size},
        "budget": {**budget, "batch_size": d.batch_size, "loss": cfg.loss.gan},
        "metrics": metrics,
        "reference": reference_info(cfg.metrics),
        "plots": plots,
    }
    notes = [FD_ENC_NOTE, ("kid_real / fd_real: the same metrics between two disjoint real sets "
                           "of the same size (the floor a perfect generator would reach).")]
    if report["reference"]["random"]:
        notes.append(RANDOM_REF_NOTE)
    if not m.encoder_in_discriminator:
        notes.append("model.encoder_in_discriminator=false: the encoder played no part.")
    return write_report(run, report, "Face GAN (DCGAN)", notes)
