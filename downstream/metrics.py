"""Downstream metrics: image quality (PSNR / SSIM / L1), KID and FD, face verification.

Images are ``[B,3,H,W]`` in [-1, 1] (the range every downstream model generates in).

**FD-enc is not Inception FID.** It is the Frechet distance between Gaussians fitted to the
features of generated and of real faces in a *fixed reference encoder* (``metrics.ref_encoder``:
name a trained domain encoder there; the default ``random:resnet18`` is a last resort and reports
say so), reduced by PCA fitted on the real features (``metrics.pca_dim``, 64) so that the few
hundred samples a CPU run affords exceed the dimension. KID (unbiased, fine at small sample counts)
is measured in the same features. Numbers are comparable only between runs that use the same
reference encoder, image size and sample counts, and never with published FID / KID values.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import linalg
from sklearn.metrics import roc_auc_score, roc_curve

from backbone_ssl.data.signed import to_unit
from backbone_ssl.evaluation.image_quality import psnr_per_image, ssim_per_image


def image_quality(fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Mean per-image PSNR (dB, data range 1 after mapping to [0, 1], capped at
    :data:`~backbone_ssl.evaluation.image_quality.PSNR_CAP_DB`), SSIM and L1 (in [-1, 1] units)
    of ``fake`` vs ``real``."""
    a, b = to_unit(fake.detach().float()), to_unit(real.detach().float())
    return {
        "psnr": float(psnr_per_image(a, b).mean()),
        "ssim": float(ssim_per_image(a, b).mean()),
        "l1": float((fake.detach().float() - real.detach().float()).abs().mean()),
    }


def pca_project(real: np.ndarray, fake: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Project ``[N,D]`` real and ``[M,D]`` fake features onto the top ``dim`` principal axes of
    the *real* features (scikit-learn PCA fitted on real only); ``dim`` is capped at ``N - 1``
    so the real covariance in that space is full rank."""
    from sklearn.decomposition import PCA

    k = int(min(dim, real.shape[1], len(real) - 1))
    pca = PCA(n_components=k, svd_solver="full").fit(real)
    return pca.transform(real), pca.transform(fake)


def frechet_stats(feats_a: np.ndarray, feats_b: np.ndarray) -> dict[str, float]:
    """Frechet distance between Gaussians fitted to ``[N,D]`` and ``[M,D]`` feature sets, with
    its numerical health: ``{"fd", "fd_imag"}``.

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` with ``scipy.linalg.sqrtm`` (its
    current API: no ``disp``). ``fd_imag`` is the largest imaginary component of the square root
    relative to its largest real one (0 for a clean result); only the real part is used. Needs
    more samples than dimensions in both sets (else the covariances are singular: reduce with
    :func:`pca_project` first) and raises ValueError on a negative result instead of clipping.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N>=2, D] feature sets, got {a.shape} and {b.shape}")
    dim = a.shape[1]
    if min(len(a), len(b)) <= dim:
        raise ValueError(f"FD in {dim} dimensions needs more than {dim} samples per set, got "
                         f"{len(a)} and {len(b)}: reduce the features (metrics.pca_dim) or "
                         "evaluate more samples (metrics.max_eval)")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.asarray(linalg.sqrtm(cov_a @ cov_b))
    if not np.isfinite(covmean).all():
        raise ValueError("FD: the covariance square root is not finite")
    imag = float(np.abs(covmean.imag).max() / max(np.abs(covmean.real).max(), 1e-12)) \
        if np.iscomplexobj(covmean) else 0.0
    diff = mu_a - mu_b
    tr = np.trace(cov_a) + np.trace(cov_b)
    value = float(diff @ diff + tr - 2.0 * np.trace(covmean.real))
    if value < -1e-6 * max(tr, 1e-12):
        raise ValueError(f"FD came out negative ({value:.3g}): the square root is unreliable "
                         f"(relative imaginary part {imag:.2g}); not reported")
    return {"fd": value, "fd_imag": imag}


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """The value of :func:`frechet_stats`."""
    return frechet_stats(feats_a, feats_b)["fd"]


def fd_in_reduced_space(real: np.ndarray, fake: np.ndarray, pca_dim: int | None
                        ) -> dict[str, float]:
    """FD of ``fake`` vs ``real`` features, in the ``pca_dim``-dimensional PCA space fitted on
    ``real`` (``None``: the full space, which needs more samples than dimensions). Adds
    ``fd_dim`` (the space's dimension) and ``fd_samples``."""
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if pca_dim:
        real, fake = pca_project(real, fake, pca_dim)
    out = frechet_stats(fake, real)
    return {**out, "fd_dim": int(real.shape[1]), "fd_samples": int(min(len(real), len(fake)))}


def kid(feature: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor, subset_size: int = 50,
        subsets: int = 100, batch_size: int = 128, seed: int = 0) -> dict[str, float]:
    """Kernel Inception Distance (Binkowski et al., 2018: unbiased MMD^2 with the cubic
    polynomial kernel, averaged over random subsets) via ``torchmetrics``, in the features of
    ``feature`` (``[B,3,H,W]`` in [-1, 1] -> ``[B,D]``; the reference encoder, not Inception).
    ``subset_size`` is capped at the smaller sample count; the subsets are drawn with their own
    ``seed`` (torchmetrics draws from the global RNG, which would make identical runs differ).
    Returns ``{"kid", "kid_std"}``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = int(min(subset_size, len(fake), len(real)))
    if size < 2:
        raise ValueError("KID needs at least 2 real and 2 generated samples")
    device = next(iter(feature.buffers()), torch.zeros(())).device
    metric = KernelInceptionDistance(feature=_Float64(feature), subsets=subsets,
                                     subset_size=size).to(device)
    with torch.no_grad():
        for i in range(0, len(real), batch_size):
            metric.update(real[i:i + batch_size].to(device), real=True)
        for i in range(0, len(fake), batch_size):
            metric.update(fake[i:i + batch_size].to(device), real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return {"kid": float(mean), "kid_std": float(std), "kid_subset_size": size}


class _Float64(torch.nn.Module):
    """The feature module with float64 output (KID's kernel sums lose precision in float32)."""

    def __init__(self, feature: torch.nn.Module) -> None:
        super().__init__()
        self.feature = feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x).double()


@torch.no_grad()
def encode_batches(feature_fn, images: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """``[N,3,H,W]`` -> ``[N,D]`` float64 features of ``feature_fn`` in batches."""
    out = [feature_fn(images[i:i + batch_size]).double().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


def fd_enc(feature_fn, fake: torch.Tensor, real: torch.Tensor, batch_size: int = 128,
           pca_dim: int | None = 64) -> float:
    """FD-enc: Frechet distance of ``fake`` vs ``real`` ([N,3,H,W], [-1, 1]) in the features of
    ``feature_fn`` (the fixed reference encoder), PCA-reduced to ``pca_dim`` on the real
    features. Not Inception FID."""
    return fd_in_reduced_space(encode_batches(feature_fn, real, batch_size),
                               encode_batches(feature_fn, fake, batch_size), pca_dim)["fd"]


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[N,M]`` between the rows of ``a`` ``[N,D]`` and ``b`` ``[M,D]``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def mean_pairwise_distance(feats: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows of ``feats`` ``[N,D]`` (N >= 2)."""
    return float(_pairwise(feats, feats)[np.triu_indices(len(feats), 1)].mean())


def diversity(fake: np.ndarray, real: np.ndarray) -> float:
    """Sample diversity: mean pairwise distance of generated samples ``[N,D]`` over that of real
    samples ``[M,D]`` (flattened pixels in the reports). 1: as varied as real faces; well below
    1: the samples are alike (mode collapse)."""
    ref = mean_pairwise_distance(real)
    return mean_pairwise_distance(fake) / ref if ref > 0 else float("nan")


def coverage(fake_feats: np.ndarray, real_feats: np.ndarray, k: int = 5) -> float:
    """Coverage (Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models",
    2020): the fraction of real samples ``[M,D]`` whose ball to their ``k``-th nearest real
    neighbour holds at least one generated sample ``[N,D]``. A generator that draws one mode
    covers few real faces however close that mode is; two real sets of the same distribution
    score near 1."""
    if len(real_feats) <= k:
        raise ValueError(f"coverage needs more than k={k} real samples")
    rr = _pairwise(real_feats, real_feats)
    np.fill_diagonal(rr, np.inf)
    radius = np.sort(rr, axis=1)[:, k - 1]
    return float((_pairwise(real_feats, fake_feats).min(axis=1) <= radius).mean())


def generator_metrics(feature: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor,
                      pca_dim: int | None, kid_subset_size: int, kid_subsets: int = 100,
                      seed: int = 0) -> dict[str, float]:
    """KID and FD (with ``fd_imag``, ``fd_dim``, ``fd_samples``) of ``fake`` vs ``real``
    ``[N,3,H,W]`` in the reference encoder ``feature``, plus :func:`coverage` (same features,
    k 5) and pixel :func:`diversity`, the two that name mode collapse; KID's subsets drawn with
    ``seed``."""
    real_f, fake_f = encode_batches(feature, real), encode_batches(feature, fake)
    out = fd_in_reduced_space(real_f, fake_f, pca_dim)
    return {**kid(feature, fake, real, kid_subset_size, kid_subsets, seed=seed), **out,
            "coverage": coverage(fake_f, real_f),
            "diversity": diversity(fake.flatten(1).numpy(), real.flatten(1).numpy())}


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
