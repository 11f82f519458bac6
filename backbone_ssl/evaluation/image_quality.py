"""Image quality of completions and generations, per image: PSNR and SSIM (torchmetrics) of
whole images, and L1 / PSNR over a hole (a masked region, which torchmetrics does not offer).

Images are ``[B,3,H,W]`` in [0, 1] (data range 1); convert [-1, 1] images with
:func:`backbone_ssl.data.signed.to_unit`. A PSNR is capped at :data:`PSNR_CAP_DB` so that an
exact reconstruction gives a finite, JSON-serialisable number.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

#: PSNR of a pair of identical images is infinite; each image's PSNR is capped at this (dB).
PSNR_CAP_DB = 100.0


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` PSNR in dB of ``pred`` vs ``target`` (``[B,3,H,W]`` in [0, 1]), each capped at
    :data:`PSNR_CAP_DB`."""
    vals = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.nan_to_num(vals, posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB)


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]`` SSIM (Wang et al., 2004; 11 px Gaussian window) of ``[B,3,H,W]`` images in
    [0, 1]; needs ``H, W >= 11``."""
    return structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")


def masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-image weighted mean: ``[B,C,H,W]`` values, ``[B,1,H,W]`` weights -> ``[B]``."""
    num = (values * weights).sum(dim=(1, 2, 3))
    return num / (weights.sum(dim=(1, 2, 3)) * values.shape[1]).clamp_min(1e-8)


def hole_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) over the hole pixels (``mask`` ``[B,1,H,W]``, 1 = hole) of ``[B,3,H,W]`` images
    in [0, 1] -> ``[B]``, capped at :data:`PSNR_CAP_DB`."""
    mse = masked_mean((pred - target) ** 2, mask).clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0))
    return -10.0 * torch.log10(mse)


def hole_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the hole pixels -> ``[B]`` (shapes as :func:`hole_psnr`)."""
    return masked_mean((pred - target).abs(), mask)


def completion_metrics(pred: torch.Tensor, target: torch.Tensor,
                       mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ``hole_psnr``, ``hole_l1`` (both over the hole) and whole-image ``psnr`` and
    ``ssim`` of completions ``pred`` vs ``target`` (``[B,3,H,W]`` in [0, 1], ``mask``
    ``[B,1,H,W]``) -> ``{name: [B]}``."""
    return {
        "hole_psnr": hole_psnr(pred, target, mask),
        "hole_l1": hole_l1(pred, target, mask),
        "psnr": psnr_per_image(pred, target),
        "ssim": ssim_per_image(pred, target),
    }


def mean_fill(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The baseline completion: each hole (``masks`` ``[B,1,H,W]``, 1 = hole) of ``images``
    ``[B,3,H,W]`` filled with its image's mean visible colour."""
    valid = 1.0 - masks
    mean = (images * valid).sum(dim=(2, 3), keepdim=True) / valid.sum(
        dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return images * valid + mean * masks
