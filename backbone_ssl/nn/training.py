"""One GAN update, done right: the critic and generator step helpers every GAN here uses.

- **Fresh data per critic step** (Gulrajani et al., 2017, Alg. 1): :func:`train_critic` asks
  ``draw(i)`` for a new ``(real, fake)`` pair before each of its ``n_critic`` updates.
- **requires_grad toggling**: the critic's parameters stop requiring grad during the generator's
  forward/backward (:func:`generator_step`), so that backward computes no critic gradients (they
  would be wasted, and would leak into the next critic step if not zeroed); gradients still flow
  *through* the critic to the fake images. Only the optimiser's own parameters are toggled, so a
  frozen feature extractor inside a critic stays frozen.
- **Critic loss** (:func:`critic_loss`): the adversarial term of :mod:`~backbone_ssl.nn.gan_losses`
  on real and detached fake, plus the WGAN-GP penalty (``wgan-gp``) and optionally R1.

``backward`` defaults to ``Tensor.backward``; inside a Lightning manual-optimisation
``training_step`` pass ``self.manual_backward``. ``optimizer`` may be a torch optimiser or
Lightning's wrapper (``self.optimizers()``).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn

from backbone_ssl.nn.gan_losses import discriminator_loss, gradient_penalty, r1_penalty

Backward = Callable[[torch.Tensor], None]


def set_requires_grad(module: nn.Module | Iterable[nn.Parameter], flag: bool) -> None:
    """Set ``requires_grad`` of every parameter of ``module`` (or of an iterable of parameters)."""
    params = module.parameters() if isinstance(module, nn.Module) else module
    for p in params:
        p.requires_grad_(flag)


def optimizer_parameters(optimizer) -> list[nn.Parameter]:
    """Every parameter an optimiser (torch or Lightning-wrapped) updates."""
    opt = getattr(optimizer, "optimizer", optimizer)
    return [p for group in opt.param_groups for p in group["params"]]


def critic_loss(kind: str, critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                fake: torch.Tensor, gp_weight: float = 10.0,
                r1_weight: float = 0.0) -> torch.Tensor:
    """One critic's full loss on ``real`` and (detached) ``fake`` ``[B,...]``: the adversarial
    term of ``kind``, plus ``gp_weight`` x the WGAN-GP penalty for ``wgan-gp`` and
    ``r1_weight / 2`` x the R1 penalty on real data when ``r1_weight > 0``."""
    fake = fake.detach()
    if r1_weight > 0:
        real = real.detach().requires_grad_(True)
    real_logits = critic(real)
    loss = discriminator_loss(kind, real_logits, critic(fake))
    if kind == "wgan-gp":
        loss = loss + gp_weight * gradient_penalty(critic, real.detach(), fake)
    if r1_weight > 0:
        loss = loss + 0.5 * r1_weight * r1_penalty(real_logits, real)
    return loss


def _step(optimizer, loss: torch.Tensor, backward: Backward | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    (backward or torch.Tensor.backward)(loss)
    optimizer.step()


def train_critic(optimizer, n_critic: int,
                 draw: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 backward: Backward | None = None) -> torch.Tensor:
    """``n_critic`` critic updates, each on a fresh ``(real, fake) = draw(i)``; the critic's
    parameters (those of ``optimizer``) require grad throughout. ``loss_fn(real, fake)`` is the
    critic loss (e.g. :func:`critic_loss`, which detaches ``fake``; ``real`` and ``fake`` may be
    any structure ``loss_fn`` understands). Draw fakes under ``torch.no_grad()`` to skip the
    generator graph. Returns the last loss, detached."""
    params = optimizer_parameters(optimizer)
    set_requires_grad(params, True)
    loss = None
    for i in range(n_critic):
        real, fake = draw(i)
        loss = loss_fn(real, fake)
        _step(optimizer, loss, backward)
    if loss is None:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    return loss.detach()


def generator_step(optimizer, loss_fn: Callable[[], torch.Tensor], critics: Sequence,
                   backward: Backward | None = None) -> torch.Tensor:
    """One generator update of ``loss_fn()`` with the critics' parameters not requiring grad.

    ``critics``: the critics' optimisers (their parameters are toggled) or modules. Their
    ``requires_grad`` flags are restored afterwards. Returns the loss, detached.
    """
    params = [p for c in critics for p in (c.parameters() if isinstance(c, nn.Module)
                                           else optimizer_parameters(c))]
    before = [p.requires_grad for p in params]
    set_requires_grad(params, False)
    try:
        loss = loss_fn()
        _step(optimizer, loss, backward)
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
    return loss.detach()
