"""Context swap: give each augmented view of a face crop another image's surroundings.

Two views of one image share its background (pattern, colour, clutter), so a joint-embedding
method can match them by the background alone and never look at the face: on the toy faces that
shortcut gives held-out kNN far below raw pixels. Face crops (iCartoonFace, ``golden prepare``
faces, toy faces) are centred on the face, so the centre of a view is mostly face and its border
mostly context. Context swap keeps a soft centred disk of each view and fills the rest from
another image of the batch, drawn afresh for every view, so the two views of an image agree on the
face and disagree on the context. It is CutMix (Yun et al., 2019) with a fixed, centred
foreground; "copy-paste" positives with swapped backgrounds (Zhao et al., 2021, "Distilling
Localization for Self-Supervised Representation Learning") are the closest SSL precedent.

Batched tensor ops on whatever device the views are on; no host sync.
"""

from __future__ import annotations

from typing import Sequence

import torch


def disk_masks(
    n: int, size: int, radius: torch.Tensor, softness: float, device: torch.device
) -> torch.Tensor:
    """Soft centred disks: ``[n,1,size,size]`` in [0, 1], 1 inside ``radius`` (a ``[n]`` tensor,
    in units of half the side), falling linearly to 0 over ``softness`` half-sides."""
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    r = torch.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)  # [S,S], 0 at the centre
    m = (radius.view(n, 1, 1) + softness - r[None]) / max(softness, 1e-6)
    return m.clamp(0.0, 1.0).unsqueeze(1)


def context_swap(
    views: Sequence[torch.Tensor],
    p: float,
    radius: Sequence[float] = (0.55, 0.8),
    softness: float = 0.15,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Views ``V x [B,3,H,W]`` (sizes may differ between views) -> the same with, for each view
    and each sample with probability ``p``, the outside of a centred disk of radius
    ``U(radius)`` (half-sides) replaced by another sample's pixels (a random cyclic shift of the
    batch, never the sample itself). ``p == 0`` or ``B < 2`` returns the views unchanged."""
    if p <= 0 or not views or views[0].shape[0] < 2:
        return list(views)
    out = []
    for v in views:
        b, device = v.shape[0], v.device
        shift = torch.randint(1, b, (1,), device=device, generator=generator)
        donor = v[(torch.arange(b, device=device) + shift) % b]
        r = torch.empty(b, device=device).uniform_(radius[0], radius[1], generator=generator)
        m = disk_masks(b, v.shape[-1], r, softness, device).to(v.dtype)
        apply = (torch.rand(b, device=device, generator=generator) < p).to(v.dtype)
        m = 1.0 - apply.view(b, 1, 1, 1) * (1.0 - m)
        out.append(m * v + (1.0 - m) * donor)
    return out
