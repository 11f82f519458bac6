"""Downstream metrics on hand-made cases: PSNR/SSIM/L1, FD-enc, verification threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backbone_ssl.data.signed import to_unit
from backbone_ssl.evaluation.image_quality import PSNR_CAP_DB, psnr_per_image
from downstream.metrics import (
    best_threshold,
    coverage,
    diversity,
    fd_enc,
    fd_in_reduced_space,
    frechet_distance,
    frechet_stats,
    image_quality,
    kid,
    mean_pairwise_distance,
    roc_auc,
    verification,
)


def _images(seed: int = 0, n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_identical_images_psnr_capped_ssim_one_l1_zero():
    x = _images()
    q = image_quality(x, x)
    assert q["psnr"] == PSNR_CAP_DB and q["ssim"] == pytest.approx(1.0) and q["l1"] == 0.0
    assert torch.equal(psnr_per_image(to_unit(x), to_unit(x)), torch.full((4,), PSNR_CAP_DB))


def test_psnr_matches_the_formula():
    x = torch.zeros(2, 3, 8, 8)
    y = x + 0.2  # 0.1 in [0, 1] units: MSE 0.01 -> 20 dB
    assert psnr_per_image(to_unit(y), to_unit(x)).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    q = image_quality(y, x)
    assert q["l1"] == pytest.approx(0.2) and q["ssim"] < 1.0


def test_frechet_distance_identical_zero_shift_grows():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    near = frechet_distance(a, a + 0.5)
    far = frechet_distance(a, a + 2.0)
    # a pure mean shift of s in every one of 8 dims gives 8 s^2
    assert near == pytest.approx(8 * 0.25, rel=1e-3) and far == pytest.approx(8 * 4.0, rel=1e-3)
    # fewer samples than dimensions (singular covariances) is refused, not papered over
    with pytest.raises(ValueError, match="needs more than 32 samples"):
        frechet_distance(rng.normal(size=(5, 32)), rng.normal(size=(5, 32)))
    # ... and fine in a PCA space fitted on the real set
    red = fd_in_reduced_space(rng.normal(size=(40, 32)), rng.normal(size=(40, 32)) + 1, 8)
    assert red["fd_dim"] == 8 and red["fd"] > 0 and red["fd_imag"] < 1e-3


def test_frechet_stats_reports_the_imaginary_part_and_refuses_negative(monkeypatch):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(100, 4)), rng.normal(size=(100, 4)) * 2
    clean = frechet_stats(a, b)
    assert clean["fd_imag"] < 1e-6 and clean["fd"] > 0
    from downstream import metrics

    # a square root twice too large (with an imaginary part) makes the trace term negative
    real_sqrtm = metrics.linalg.sqrtm
    monkeypatch.setattr(metrics.linalg, "sqrtm", lambda m: 2 * real_sqrtm(m) + 0.5j)
    with pytest.raises(ValueError, match="negative"):
        frechet_stats(a, b)


def test_kid_unbiased_near_zero_for_the_same_distribution_and_grows_with_shift():
    feats = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    torch.manual_seed(0)
    real, other = _images(1, n=60), _images(2, n=60)
    same = kid(feats, other, real, subset_size=30, subsets=50)
    shifted = kid(feats, (other + 0.8).clamp(-1, 1), real, subset_size=30, subsets=50)
    # unbiased: the same distribution scores ~0 (either sign), a shift scores far above it
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * abs(same["kid"]) and shifted["kid"] > 0
    assert kid(feats, other[:7], real, subset_size=50)["kid_subset_size"] == 7


def test_kid_subsets_do_not_depend_on_the_global_rng():
    feats = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    real, fake = _images(1, n=40), _images(2, n=40)
    torch.manual_seed(1)
    a = kid(feats, fake, real, subset_size=10, subsets=5)
    torch.manual_seed(2)
    b = kid(feats, fake, real, subset_size=10, subsets=5)
    assert a == b  # the subset draw has its own seed: identical runs give identical KID
    state = torch.random.get_rng_state()
    kid(feats, fake, real, subset_size=10, subsets=5)
    assert torch.equal(state, torch.random.get_rng_state())  # and leaves the global RNG alone
    c = kid(feats, fake, real, subset_size=10, subsets=5, seed=1)
    assert c["kid"] != a["kid"]  # with 5 subsets of 10, another draw gives another mean


def test_fd_enc_in_a_feature_function():
    torch.manual_seed(0)  # before the layer is built: its weights must not depend on test order
    feats = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6))
    real = _images(1, n=40)
    assert fd_enc(feats, real, real) == pytest.approx(0.0, abs=1e-6)
    assert fd_enc(feats, (real + 0.5).clamp(-1, 1), real) > fd_enc(feats, _images(2, n=40), real)


def test_threshold_is_chosen_on_validation_and_applied_to_test():
    val_scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    val_same = np.array([0, 0, 0, 1, 1, 1])
    thr, acc = best_threshold(val_scores, val_same)
    assert acc == 1.0 and 0.3 < thr <= 0.7
    # on test, a threshold of 0.35 would be perfect; the val threshold (0.7) misclassifies 0.5
    test_scores = np.array([0.1, 0.3, 0.5, 0.9])
    test_same = np.array([0, 0, 1, 1])
    out = verification(val_scores, val_same, test_scores, test_same)
    assert out["threshold"] == thr and out["val_accuracy"] == 1.0
    assert out["accuracy"] == 0.75 and out["roc_auc"] == 1.0
    assert math.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_diversity_is_one_for_real_like_samples_and_near_zero_for_collapse():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    assert diversity(rng.normal(size=(200, 16)), real) == pytest.approx(1.0, abs=0.03)
    collapsed = np.ones((200, 16)) + 0.01 * rng.normal(size=(200, 16))
    assert diversity(collapsed, real) < 0.02
    assert diversity(0.5 * rng.normal(size=(200, 16)), real) == pytest.approx(0.5, abs=0.03)
    # the pairwise mean by hand: three points on a line at 0, 3, 4 -> (3 + 4 + 1) / 3
    pts = np.array([[0.0], [3.0], [4.0]])
    assert mean_pairwise_distance(pts) == pytest.approx(8 / 3)


def test_coverage_near_one_for_the_same_distribution_and_low_for_one_mode():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    assert coverage(rng.normal(size=(300, 8)), real) > 0.9
    # one mode, right at a real sample: close to real data, yet it covers few real faces
    one_mode = real[:1] + 0.01 * rng.normal(size=(300, 8))
    assert coverage(one_mode, real) < 0.05
    # half the space (2-d, only samples with x0 > 0): about half the real faces covered
    real2 = rng.normal(size=(300, 2))
    half = rng.normal(size=(900, 2))
    half = half[half[:, 0] > 0][:300]
    assert 0.4 < coverage(half, real2) < 0.7
