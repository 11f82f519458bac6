"""``downstream introvae``: an IntroVAE on face crops (Huang, Li, He, Sun & Tan, "IntroVAE:
Introspective Variational Autoencoders for Photographic Image Synthesis", NeurIPS 2018,
https://arxiv.org/abs/1807.06358).

A VAE whose encoder is also its discriminator. E maps a face to ``(mu, logvar)``
(:class:`downstream.latent.FaceEncoder`: an exported encoder, fine-tuned, plus a linear head),
G = the decoder (DCGAN generator). With ``L_REG(x) = KL(q(z|x) || N(0, I))`` (per sample, summed
over the latent dims), ``x_r = G(z)``, ``z ~ q(z|x)`` and ``x_p = G(z_p)``, ``z_p ~ N(0, I)``,
``L_AE = 1/2 ||x_r - x||^2`` (per-sample sum, batch mean) and ``sg`` = stop-gradient, the paper's
eq. 11-12:

- E: ``L_REG(x) + alpha * sum_{s in r,p} [m - L_REG(sg(x_s))]^+ + beta * L_AE``: real faces
  near the prior, generated ones pushed at least ``m`` away from it;
- G: ``alpha * sum_{s in r,p} L_REG(x_s) + beta * L_AE``: G wants its faces encoded near the
  prior (E's parameters frozen in this step, gradients flowing through E to the images).

One E step then one G step per batch (two optimisers; E's step plays the critic step, so the
budget counts like a GAN with one critic step). ``loss.vae_warmup_steps`` batches first train a
plain VAE (the adversarial terms off), as the authors' code allows. KID and FD of ``G(z_p)``
against real faces come from :func:`downstream.facegan.evaluate`; ``rec_l1`` is
``|x - G(mu(x))|`` on the evaluated real faces. DiffAugment does not apply (E is no separate
critic: augmenting its input would change the reconstruction target).
"""

from __future__ import annotations

import torch

from backbone_ssl.nn.training import generator_step
from downstream.config import IntrovaeConfig
from downstream.latent import LatentFaceModel, kl_per_sample, reparameterise
from downstream.latent_run import run_latent_model


def reconstruction_loss(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """IntroVAE's ``L_AE = 1/2 ||x_rec - x||^2``: per-sample sum over ``[3,S,S]``, batch mean."""
    return 0.5 * (x_rec - x).pow(2).flatten(1).sum(1).mean()


class IntroVAE(LatentFaceModel):
    """E (encoder and adversary) and G (decoder) with manual optimisation: one E step, then one
    G step with E frozen, per batch. ``sample``: ``G(z_p)``, ``z_p ~ N(0, I)``; ``reconstruct``:
    ``G(mu(x))`` (the posterior mean, no sampling)."""

    def __init__(self, cfg: IntrovaeConfig, encoder) -> None:
        super().__init__(cfg, encoder, variational=True)  # E gives (mu, logvar)

    def introspective(self) -> bool:
        """Whether the adversarial terms are on (after ``loss.vae_warmup_steps`` batches)."""
        batches = self.global_step // 2  # global_step counts both optimisers' steps
        return batches >= self.cfg.loss.vae_warmup_steps

    def encoder_loss(self, x: torch.Tensor, z_p: torch.Tensor, adversarial: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """E's loss (eq. 11) on faces ``x [B,3,S,S]`` with prior codes ``z_p [B,L]``; returns
        ``(loss, z, terms)`` with ``z ~ q(z|x)`` (for G's step). Gradients reach G only through
        ``L_AE`` (the caller freezes G's parameters)."""
        lo = self.cfg.loss
        mu, logvar = self.encoder(x)
        z = reparameterise(mu, logvar)
        x_r = self.generator(z)
        rec = reconstruction_loss(x_r, x)
        kl_real = kl_per_sample(mu, logvar).mean()
        loss = kl_real + lo.beta * rec
        terms = {"kl_real": kl_real.detach(), "rec": rec.detach()}
        if adversarial:
            with torch.no_grad():
                x_p = self.generator(z_p)
            kl_r = kl_per_sample(*self.encoder(x_r.detach()))
            kl_p = kl_per_sample(*self.encoder(x_p))
            hinge = ((lo.margin - kl_r).clamp(min=0).mean()
                     + (lo.margin - kl_p).clamp(min=0).mean())
            loss = loss + lo.alpha * hinge
            terms.update(kl_rec=kl_r.mean().detach(), kl_fake=kl_p.mean().detach())
        return loss, z.detach(), terms

    def generator_loss(self, x: torch.Tensor, z: torch.Tensor, z_p: torch.Tensor,
                       adversarial: bool = True) -> torch.Tensor:
        """G's loss (eq. 12) for faces ``x`` with their codes ``z`` (detached) and prior codes
        ``z_p``; call it with E's parameters frozen."""
        lo = self.cfg.loss
        x_r = self.generator(z)
        loss = lo.beta * reconstruction_loss(x_r, x)
        if adversarial:
            x_p = self.generator(z_p)
            loss = loss + lo.alpha * (kl_per_sample(*self.encoder(x_r)).mean()
                                      + kl_per_sample(*self.encoder(x_p)).mean())
        return loss

    def training_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        opt_e, opt_g = self.optimizers()
        adversarial = self.introspective()
        z_p = torch.randn(x.shape[0], self.cfg.model.latent_dim, device=x.device)
        terms: dict = {}

        def e_loss() -> torch.Tensor:
            loss, z, t = self.encoder_loss(x, z_p, adversarial)
            terms.update(t, z=z)
            return loss

        e = generator_step(opt_e, e_loss, [opt_g], self.manual_backward)
        z = terms.pop("z")
        g = generator_step(opt_g, lambda: self.generator_loss(x, z, z_p, adversarial), [opt_e],
                           self.manual_backward)
        self.log_dict({"train/e_loss": e, "train/g_loss": g}, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})

    def configure_optimizers(self):
        o = self.cfg.optim
        kw = {"betas": (o.beta1, o.beta2), "weight_decay": o.weight_decay}
        return [torch.optim.Adam(self.encoder.param_groups(o.lr, o.encoder_lr), **kw),
                torch.optim.Adam(self.generator.parameters(), lr=o.lr, **kw)]


def run_introvae(cfg: IntrovaeConfig, encoder_spec: str, run_dir: str,
                 resume: bool = False) -> dict:
    """Train the IntroVAE (or continue ``RUN/checkpoints/last.ckpt`` with ``resume``) and write
    the report."""
    return run_latent_model(cfg, encoder_spec, run_dir, resume, IntroVAE, title="Face IntroVAE",
                            curves={"loss": ("train/e_loss", "train/g_loss"),
                                    "kl": ("train/kl_real", "train/kl_rec", "train/kl_fake"),
                                    "reconstruction": ("train/rec",)},
                            sample_caption="top row: real faces; below: G(z_p), z_p ~ N(0, I)",
                            rec_note="rec_l1: mean |x - G(mu(x))| in [-1, 1] units on the "
                                     "evaluated real faces.")
