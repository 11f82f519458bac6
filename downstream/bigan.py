"""``downstream bigan``: a BiGAN on face crops (Donahue, Kraehenbuehl & Darrell, "Adversarial
Feature Learning", ICLR 2017, https://arxiv.org/abs/1605.09782; = ALI, Dumoulin et al. 2017).

E maps a face to ``z`` (an exported encoder, fine-tuned, plus a linear head:
:class:`downstream.latent.FaceEncoder`), G maps ``z ~ N(0, I)`` to a face (DCGAN generator), and
D judges *pairs*: real ``(x, E(x))`` against fake ``(G(z), z)``. E and G are trained together
against D with the labels swapped (for the symmetric losses here: D's logits negated), so at the
optimum E inverts G. ``loss.gan=wgan-gp`` gives the Wasserstein BiGAN: the critic's gradient
penalty is taken on interpolates of the whole pair (image and latent), with the WGAN-GP defaults
(Adam(0, 0.9), 5 critic steps) that :func:`downstream.config.resolve_gan_training` validates.

Training helpers from :mod:`backbone_ssl.nn.training`: fresh real faces and fresh ``z`` for every
critic step, D frozen during the E+G step, DiffAugment on D's image input. KID and FD of
``G(z)`` against real faces come from :func:`downstream.facegan.evaluate` (the fixed reference
encoder ``metrics.ref_encoder``); ``rec_l1`` is the mean L1 of ``x`` vs ``G(E(x))`` on the
evaluated real faces (in [-1, 1] units).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from backbone_ssl.nn.critics import ConvDiscriminator
from backbone_ssl.nn.diffaugment import AugmentedCritic
from backbone_ssl.nn.gan_losses import generator_loss
from downstream.config import BiganConfig
from downstream.latent import LatentFaceModel
from downstream.latent_run import run_latent_model

log = logging.getLogger(__name__)


class JointDiscriminator(nn.Module):
    """D(x, z): ``x [B,3,S,S]``, ``z [B,L]`` -> ``[B]`` scores.

    BiGAN's joint discriminator: a conv image branch (no normalisation, so WGAN-GP's per-sample
    penalty holds), an MLP on ``z``, and an MLP on their concatenation (dropout-free)."""

    def __init__(self, image_size: int, latent_dim: int, width: int = 32,
                 hidden: int = 256) -> None:
        super().__init__()
        conv = ConvDiscriminator(image_size, width=width)
        self.image = conv.features
        x_dim = conv.head.in_features
        self.latent = nn.Sequential(nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2, True))
        self.joint = nn.Sequential(nn.Linear(x_dim + hidden, hidden), nn.LeakyReLU(0.2, True),
                                   nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.image(x).flatten(1), self.latent(z)], dim=1)
        return self.joint(h).squeeze(1)


class PairCritic(nn.Module):
    """A critic of one tensor over ``(x, z)`` pairs packed as ``[B, 3*S*S + L]``
    (:meth:`pack`), so the shared critic loss, WGAN-GP penalty (on interpolates of both parts)
    and R1 apply unchanged. ``critic(x, z)`` is usually an :class:`AugmentedCritic` (it augments
    ``x`` only)."""

    def __init__(self, critic: nn.Module, image_size: int) -> None:
        super().__init__()
        self.critic = critic
        self.shape = (3, image_size, image_size)
        self.n_pixels = 3 * image_size * image_size

    @staticmethod
    def pack(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``x [B,3,S,S]``, ``z [B,L]`` -> ``[B, 3*S*S + L]``."""
        return torch.cat([x.flatten(1), z], dim=1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        x = pair[:, :self.n_pixels].reshape(pair.shape[0], *self.shape)
        return self.critic(x, pair[:, self.n_pixels:])


class BiGAN(LatentFaceModel):
    """E, G and the pair critic D, trained with manual optimisation: ``n_critic`` D steps on
    fresh data, then one joint E+G step with D frozen."""

    def __init__(self, cfg: BiganConfig, encoder) -> None:
        super().__init__(cfg, encoder, variational=False)
        m, d = cfg.model, cfg.data
        joint = JointDiscriminator(d.image_size, m.latent_dim, m.disc_channels, m.joint_hidden)
        self.discriminator = PairCritic(AugmentedCritic(joint, m.diffaugment), d.image_size)

    def pairs(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed real pairs ``(x, E(x))`` and fake pairs ``(G(z), z)`` for a batch of faces."""
        z = torch.randn(real.shape[0], self.cfg.model.latent_dim, device=real.device)
        return (PairCritic.pack(real, self.encoder(real)),
                PairCritic.pack(self.generator(z), z))

    def encoder_generator_loss(self, real: torch.Tensor) -> torch.Tensor:
        """E+G loss with the labels swapped: G wants ``(G(z), z)`` judged real, E wants
        ``(x, E(x))`` judged fake; for the symmetric losses here that is the generator loss of
        ``D(fake pair)`` plus that of ``-D(real pair)`` (nonsaturating:
        ``softplus(-D(G(z), z)) + softplus(D(x, E(x)))``)."""
        kind, d = self.cfg.loss.gan, self.discriminator
        real_pair, fake_pair = self.pairs(real)
        return generator_loss(kind, d(fake_pair)) + generator_loss(kind, -d(real_pair))

    def training_step(self, batch, batch_idx: int) -> None:
        self.critic_then_encoder_generator(batch, self.pairs, self.encoder_generator_loss)

    def configure_optimizers(self):
        return self.critic_optimizers()


def run_bigan(cfg: BiganConfig, encoder_spec: str, run_dir: str, resume: bool = False) -> dict:
    """Train the BiGAN (or continue ``RUN/checkpoints/last.ckpt`` with ``resume``) and write
    the report."""
    title = "Face BiGAN" + (" (Wasserstein)" if cfg.loss.gan == "wgan-gp" else "")
    return run_latent_model(cfg, encoder_spec, run_dir, resume, BiGAN, title=title,
                            curves={"loss": ("train/d_loss", "train/eg_loss")},
                            sample_caption="top row: real faces; below: G(z)",
                            rec_note="rec_l1: mean |x - G(E(x))| in [-1, 1] units on the "
                                     "evaluated real faces.")
