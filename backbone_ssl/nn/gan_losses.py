"""Adversarial losses, selectable by name, the WGAN-GP gradient penalty and the R1 penalty.

All functions take raw discriminator outputs (logits / critic scores) of any shape and return a
scalar. ``kind`` is one of :data:`GAN_LOSSES`:

- ``nonsaturating``: Goodfellow et al., 2014 (https://arxiv.org/abs/1406.2661), the generator
  maximises ``log D(fake)``; D: ``softplus(-real) + softplus(fake)``, G: ``softplus(-fake)``;
- ``hinge``: Lim & Ye, 2017 / Miyato et al., 2018; D: ``relu(1 - real) + relu(1 + fake)``,
  G: ``-fake``;
- ``wgan-gp``: Gulrajani et al., 2017 (https://arxiv.org/abs/1704.00028); D (critic):
  ``fake - real`` plus ``gp_weight`` x :func:`gradient_penalty`, G: ``-fake``.

Regularisers: :func:`gradient_penalty` (WGAN-GP, on real/fake interpolates) and
:func:`r1_penalty` (Mescheder et al., 2018, https://arxiv.org/abs/1801.04406, on real data).

Generic on purpose (no model code here): pretraining (``methods/inpaint.py``) and every
``downstream`` GAN import it from here.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from backbone_ssl.errors import UserError

GAN_LOSSES = ("nonsaturating", "hinge", "wgan-gp")


def check_gan_loss(kind: str) -> None:
    """UserError unless ``kind`` is a known loss name."""
    if kind not in GAN_LOSSES:
        raise UserError(f"unknown GAN loss '{kind}' (choose from {', '.join(GAN_LOSSES)})")


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator (critic) loss on outputs for real and (detached) fake samples; without the
    gradient penalty, which :func:`gradient_penalty` adds for ``wgan-gp``."""
    check_gan_loss(kind)
    if kind == "nonsaturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return fake.mean() - real.mean()


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on the discriminator's outputs for generated samples."""
    check_gan_loss(kind)
    if kind == "nonsaturating":
        return F.softplus(-fake).mean()
    return -fake.mean()


def gradient_penalty(critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                     fake: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty ``E[(||grad_x critic(x)||_2 - 1)^2]`` at random interpolates
    ``x = a * real + (1 - a) * fake``, ``a ~ U[0,1]`` per sample.

    ``real``/``fake``: ``[B,...]`` of equal shape (``fake`` is detached here). The graph is kept
    (``create_graph=True``) so the penalty trains the critic.
    """
    fake = fake.detach()
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(shape, generator=generator, device="cpu").to(real)
    x = (alpha * real.detach() + (1.0 - alpha) * fake).requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    norms = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 penalty ``E_x[||grad_x D(x)||_2^2]`` on real data (Mescheder et al., 2018).

    ``real_logits``: ``[B]`` (or ``[B,...]``, summed) critic outputs computed *from*
    ``real_images`` ``[B,...]``, which must require grad (set ``real.requires_grad_(True)``
    before the critic's forward; DiffAugment in between is fine, it is differentiable). Returns
    the batch mean of the squared gradient norms; the graph is kept so it trains the critic.
    Multiply by ``gamma / 2`` as in the paper.
    """
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad (call "
                         "real.requires_grad_(True) before the critic's forward)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()
