"""``downstream vaegan``: a VAE-GAN on face crops (Larsen, Sonderby, Larochelle & Winther,
"Autoencoding beyond pixels using a learned similarity metric", ICML 2016,
https://arxiv.org/abs/1512.09300).

- Enc: face -> ``(mu, logvar)`` (:class:`downstream.latent.FaceEncoder`, an exported encoder
  fine-tuned plus a linear head), ``z = mu + sigma * eps``;
- Dec = G: ``z`` -> face (DCGAN generator); ``x~ = Dec(z)``, ``x_p = Dec(z_p)``, ``z_p ~ N(0, I)``;
- Dis: a conv discriminator; its last conv block's features ``Dis_l`` give the learned
  similarity ``L_llike = ||Dis_l(x) - Dis_l(x~)||^2`` (per-sample sum, batch mean; on the
  un-augmented images), in place of a pixel loss.

Updates (the paper's Algorithm 1): Enc on ``kl_weight * L_prior + rec_weight * L_llike``; Dec on
``gamma * L_llike + adv_weight * L_GAN`` (the generator loss on ``D(x~)`` and ``D(x_p)``); Dis on
real ``x`` against fakes, half ``x~`` and half ``x_p`` (fresh faces for each of ``n_critic``
steps, DiffAugment on every adversarial input, :mod:`backbone_ssl.nn.training`). One optimiser
holds Enc and Dec; the paper's per-network losses are obtained by a second decoder pass on the
detached ``z``, so the adversarial term and the extra ``(gamma - 1)`` share of ``L_llike`` reach
the decoder only (:meth:`VAEGAN.encoder_decoder_loss`).

KID and FD of ``x_p`` against real faces come from :func:`downstream.facegan.evaluate`;
``rec_l1`` is ``|x - Dec(mu(x))|`` on the evaluated real faces.
"""

from __future__ import annotations

import torch

from backbone_ssl.nn.critics import ConvDiscriminator
from backbone_ssl.nn.diffaugment import AugmentedCritic
from backbone_ssl.nn.gan_losses import generator_loss
from downstream.config import VaeganConfig
from downstream.latent import (
    LatentFaceModel,
    kl_divergence,
    reparameterise,
)
from downstream.latent_run import run_latent_model


def feature_loss(dis: ConvDiscriminator, x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Larsen's ``L_llike``: squared distance of ``Dis_l`` features (``dis.features``, the last
    conv block, ``[B,C,h,w]``) of ``x`` and ``x_rec``, summed per sample, batch mean. ``x``'s
    features are the target (no gradient)."""
    with torch.no_grad():
        target = dis.features(x)
    return (dis.features(x_rec) - target).pow(2).flatten(1).sum(1).mean()


class VAEGAN(LatentFaceModel):
    """Enc, Dec and Dis trained with manual optimisation: ``n_critic`` Dis steps, then one
    Enc+Dec step with Dis frozen. ``sample``: ``Dec(z_p)``, ``z_p ~ N(0, I)``;
    ``reconstruct``: ``Dec(mu(x))`` (the posterior mean, no sampling)."""

    def __init__(self, cfg: VaeganConfig, encoder) -> None:
        super().__init__(cfg, encoder, variational=True)
        m, d = cfg.model, cfg.data
        self.dis = ConvDiscriminator(d.image_size, width=m.disc_channels)
        self.discriminator = AugmentedCritic(self.dis, m.diffaugment)

    def fakes(self, real: torch.Tensor) -> torch.Tensor:
        """The critic's fakes for a batch of faces ``[B,3,S,S]``: the first half ``x~``
        (reconstructions of the first half), the rest ``x_p`` (prior samples)."""
        h = max(1, real.shape[0] // 2)
        mu, logvar = self.encoder(real[:h])
        rec = self.generator(reparameterise(mu, logvar))
        return torch.cat([rec, self.sample(real.shape[0] - h)])

    def encoder_decoder_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Enc+Dec loss whose gradients are Larsen's: Enc gets ``kl_w * KL + rec_w * L_llike``,
        Dec gets ``gamma * L_llike + adv_w * L_GAN``. Returns ``(loss, terms)``."""
        lo = self.cfg.loss
        mu, logvar = self.encoder(x)
        z = reparameterise(mu, logvar)
        rec = self.generator(z)  # gradients to Enc and Dec
        rec_dec = self.generator(z.detach())  # gradients to Dec only
        llike = feature_loss(self.dis, x, rec)
        llike_dec = feature_loss(self.dis, x, rec_dec)
        kl = kl_divergence(mu, logvar)
        adv = (generator_loss(lo.gan, self.discriminator(rec_dec))
               + generator_loss(lo.gan, self.discriminator(self.sample(x.shape[0]))))
        # Enc: kl_w*KL + rec_w*L_llike; Dec: rec_w*L_llike + (gamma - rec_w)*L_llike + adv
        loss = (lo.kl_weight * kl + lo.rec_weight * llike
                + (lo.gamma - lo.rec_weight) * llike_dec + lo.adv_weight * adv)
        return loss, {"kl": kl.detach(), "llike": llike.detach(), "adv": adv.detach()}

    def training_step(self, batch, batch_idx: int) -> None:
        terms: dict = {}

        def eg_loss(x: torch.Tensor) -> torch.Tensor:
            loss, t = self.encoder_decoder_loss(x)
            terms.update(t)
            return loss

        self.critic_then_encoder_generator(batch, lambda x: (x, self.fakes(x)), eg_loss)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})

    def configure_optimizers(self):
        return self.critic_optimizers()


def run_vaegan(cfg: VaeganConfig, encoder_spec: str, run_dir: str, resume: bool = False) -> dict:
    """Train the VAE-GAN (or continue ``RUN/checkpoints/last.ckpt`` with ``resume``) and write
    the report."""
    return run_latent_model(cfg, encoder_spec, run_dir, resume, VAEGAN, title="Face VAE-GAN",
                            curves={"loss": ("train/d_loss", "train/eg_loss"),
                                    "vae": ("train/kl", "train/llike", "train/adv")},
                            sample_caption="top row: real faces; below: Dec(z_p), z_p ~ N(0, I)",
                            rec_note="rec_l1: mean |x - Dec(mu(x))| in [-1, 1] units on the "
                                     "evaluated real faces.")
