"""DiffAugment: differentiable augmentation of every discriminator input (Zhao et al., 2020,
"Differentiable Augmentation for Data-Efficient GAN Training", https://arxiv.org/abs/2006.10738).

The same random, differentiable transform is applied to real *and* generated images each time the
discriminator sees them (in its own step and in the generator's), so D cannot memorise the few
real images and G still gets gradients through the augmentation. Follows the authors' PyTorch
reference (``DiffAugment_pytorch.py``) op for op:

- ``color``: brightness ``+U(-0.5, 0.5)``, saturation ``x U(0, 2)`` around the per-pixel channel
  mean, contrast ``x U(0.5, 1.5)`` around the image mean;
- ``translation``: integer shifts up to 1/8 of the side, zero padding (grey in [-1, 1]);
- ``cutout``: one square of half the side set to zero, at a random centre.

Images are ``[B,C,H,W]`` in [-1, 1]; each sample draws its own parameters. No host syncs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_POLICY = "color,translation,cutout"


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None
          ) -> torch.Tensor:
    if generator is None:
        return torch.rand(shape, dtype=x.dtype, device=x.device)
    return torch.rand(shape, generator=generator, dtype=x.dtype,
                      device=generator.device).to(x.device)


def _randint(low: int, high: int, shape: tuple[int, ...], x: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return torch.randint(low, high, shape, device=x.device)
    return torch.randint(low, high, shape, generator=generator,
                         device=generator.device).to(x.device)


def rand_brightness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + (_rand((x.shape[0], 1, 1, 1), x, generator) - 0.5)


def rand_saturation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, generator) * 2) + mean


def rand_contrast(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((x.shape[0], 1, 1, 1), x, generator) + 0.5) + mean


def rand_translation(x: torch.Tensor, generator: torch.Generator | None = None,
                     ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = _randint(-sh, sh + 1, (b, 1, 1), x, generator)
    tx = _randint(-sw, sw + 1, (b, 1, 1), x, generator)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device), torch.arange(h, device=x.device),
                                torch.arange(w, device=x.device), indexing="ij")
    gy = torch.clamp(gy + ty + 1, 0, h + 1)
    gx = torch.clamp(gx + tx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)


def rand_cutout(x: torch.Tensor, generator: torch.Generator | None = None,
                ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = _randint(0, h + (1 - ch % 2), (b, 1, 1), x, generator)
    ox = _randint(0, w + (1 - cw % 2), (b, 1, 1), x, generator)
    gb, gy, gx = torch.meshgrid(torch.arange(b, device=x.device),
                                torch.arange(ch, device=x.device),
                                torch.arange(cw, device=x.device), indexing="ij")
    gy = torch.clamp(gy + oy - ch // 2, 0, h - 1)
    gx = torch.clamp(gx + ox - cw // 2, 0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[gb, gy, gx] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS: dict[str, list[Callable[..., torch.Tensor]]] = {
    "color": [rand_brightness, rand_saturation, rand_contrast],
    "translation": [rand_translation],
    "cutout": [rand_cutout],
}


def check_policy(policy: str) -> list[str]:
    """The policy's op names (``""`` or ``"none"``: none); ValueError naming an unknown op."""
    if policy in ("", "none"):
        return []
    names = [p.strip() for p in policy.split(",") if p.strip()]
    bad = [p for p in names if p not in AUGMENT_FNS]
    if bad:
        raise ValueError(f"unknown DiffAugment op(s) {', '.join(bad)} (choose from "
                         f"{', '.join(AUGMENT_FNS)}, comma-separated, or 'none')")
    return names


def diff_augment(x: torch.Tensor, policy: str = DEFAULT_POLICY,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the DiffAugment ops of ``policy`` (comma-separated names of :data:`AUGMENT_FNS`, in
    order) to ``x`` ``[B,C,H,W]`` in [-1, 1] -> same shape, differentiable in ``x``.

    Call it on real and fake alike, each time D sees them. ``generator`` makes the draws
    reproducible (tests); by default they come from the global RNG on ``x``'s device.
    """
    for name in check_policy(policy):
        for fn in AUGMENT_FNS[name]:
            x = fn(x, generator)
    return x.contiguous()


class AugmentedCritic(nn.Module):
    """``critic(diff_augment(x, policy))``: a critic that augments every input it sees, so real,
    fake and gradient-penalty interpolates all go through DiffAugment. ``policy='none'`` makes it
    the bare critic."""

    def __init__(self, critic: nn.Module, policy: str = DEFAULT_POLICY) -> None:
        super().__init__()
        check_policy(policy)
        self.critic = critic
        self.policy = policy

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.critic(diff_augment(x, self.policy), *args, **kwargs)
