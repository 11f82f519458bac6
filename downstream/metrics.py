"""Downstream metrics: image quality (PSNR / SSIM / L1), FD-enc, face verification.

Images are ``[B,3,H,W]`` in [-1, 1] (the range every downstream model generates in).

**FD-enc is not Inception FID.** It is the Frechet distance between Gaussians fitted to the
features of generated and of real faces in a *fixed reference encoder* (by default a
``random:resnet18`` with a fixed seed; any encoder spec works). Numbers are comparable only between
runs that use the same reference encoder, image size and sample counts, and never with published
FID values.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import linalg
from sklearn.metrics import roc_auc_score, roc_curve
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

#: PSNR of a pair of identical images is infinite; each image's PSNR is capped at this (dB) so
#: means stay finite and JSON-serialisable.
PSNR_CAP_DB = 100.0


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr_per_image(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``[B]`` PSNR in dB on [0, 1] images (data range 1), each capped at :data:`PSNR_CAP_DB`."""
    a, b = _to_unit(fake), _to_unit(real)
    vals = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return torch.nan_to_num(vals, posinf=PSNR_CAP_DB).clamp(max=PSNR_CAP_DB)


def image_quality(fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB), SSIM and L1 (in [-1, 1] units) of ``fake`` vs ``real``."""
    a, b = _to_unit(fake), _to_unit(real)
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return {
        "psnr": float(psnr_per_image(fake, real).mean()),
        "ssim": float(ssim.mean()),
        "l1": float((fake.detach().float() - real.detach().float()).abs().mean()),
    }


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to ``[N,D]`` and ``[M,D]`` feature sets.

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with ``scipy.linalg.sqrtm``; when the
    product is singular (fewer samples than dimensions) ``eps`` is added to both diagonals, as
    pytorch-fid does. Tiny imaginary parts from numerical error are dropped.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N>=2, D] feature sets, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # singular products are expected with N < D; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
        if not np.isfinite(covmean).all():
            offset = np.eye(a.shape[1]) * eps
            covmean, _ = linalg.sqrtm((cov_a + offset) @ (cov_b + offset), disp=False)
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


@torch.no_grad()
def encode_batches(feature_fn, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """``[N,3,H,W]`` -> ``[N,D]`` float64 features of ``feature_fn`` in batches."""
    out = [feature_fn(images[i:i + batch_size]).double().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def fd_enc(feature_fn, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 128) -> float:
    """FD-enc: Frechet distance of ``fake`` vs ``real`` ([N,3,H,W], [-1, 1]) in the features of
    ``feature_fn`` (the fixed reference encoder). Not Inception FID."""
    return frechet_distance(encode_batches(feature_fn, fake, batch_size),
                            encode_batches(feature_fn, real, batch_size))


# ---- verification ------------------------------------------------------------------------------
def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold on similarity ``scores`` (predict "same" when ``score >= t``) maximising accuracy
    on these pairs. Returns ``(threshold, accuracy)``; ties go to the lowest threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same).astype(bool)
    order = np.unique(scores)
    candidates = np.concatenate([order, [order[-1] + 1e-6]]) if len(order) else np.array([0.0])
    accs = np.array([((scores >= t) == same).mean() for t in candidates])
    i = int(np.argmax(accs))
    return float(candidates[i]), float(accs[i])


def verification(val_scores: np.ndarray, val_same: np.ndarray, test_scores: np.ndarray,
                 test_same: np.ndarray) -> dict[str, float]:
    """Accuracy on test at the threshold chosen on validation, plus ROC-AUC on test."""
    thr, val_acc = best_threshold(val_scores, val_same)
    test_same = np.asarray(test_same).astype(bool)
    acc = float(((np.asarray(test_scores) >= thr) == test_same).mean())
    return {"accuracy": acc, "threshold": thr, "val_accuracy": val_acc,
            "roc_auc": roc_auc(test_scores, test_same)}


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """ROC-AUC of similarity scores (NaN when only one class is present)."""
    same = np.asarray(same).astype(int)
    if same.min() == same.max():
        return math.nan
    return float(roc_auc_score(same, scores))


def roc_points(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) for plotting."""
    fpr, tpr, _ = roc_curve(np.asarray(same).astype(int), scores)
    return fpr, tpr
