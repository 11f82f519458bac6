"""Exact kNN screened in bfloat16 (evaluation/screened.py): same neighbours as the float32
exhaustive search, fallbacks when the screen cannot certify, and the dispatch in knn_search."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from backbone_ssl.evaluation import knn, screened
from backbone_ssl.evaluation.knn import knn_search, l2_normalize
from backbone_ssl.evaluation.screened import candidates, screened_search


def exact(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(l2_normalize(gallery))
    return index.search(l2_normalize(queries), k)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunk sizes small enough that the test data spans several query and gallery chunks."""
    monkeypatch.setattr(screened, "QUERY_CHUNK", 64)
    monkeypatch.setattr(screened, "GALLERY_CHUNK", 1000)
    monkeypatch.setattr(screened, "RERANK_CHUNK", 16)


@pytest.mark.parametrize("k", [1, 10, 40])
def test_screened_equals_exhaustive_float32(small_chunks, k):
    rng = np.random.default_rng(k)
    centres = rng.standard_normal((30, 48)).astype(np.float32)
    gallery = centres[rng.integers(0, 30, 3500)] + rng.standard_normal((3500, 48)).astype(
        np.float32)
    queries = centres[rng.integers(0, 30, 150)] + rng.standard_normal((150, 48)).astype(
        np.float32)
    sims, idx, fallbacks = screened_search(gallery, queries, k)
    ref_sims, ref_idx = exact(gallery, queries, k)
    assert sims.shape == idx.shape == (150, k) and idx.dtype == np.int64
    assert sims.dtype == np.float32
    assert [set(a) for a in idx] == [set(b) for b in ref_idx]
    np.testing.assert_allclose(sims, ref_sims, atol=2e-6)
    assert np.all(np.diff(sims, axis=1) <= 0)  # most similar first
    assert 0 <= fallbacks < 150


def test_uncertifiable_queries_fall_back_to_float32(small_chunks):
    # 3000 rows that bfloat16 cannot tell apart (perturbations of 1e-4 around one direction):
    # the screen's ranking is noise, so nothing is certified and every query is re-searched.
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32).astype(np.float32)
    gallery = base + 1e-4 * rng.standard_normal((3000, 32)).astype(np.float32)
    queries = base + 1e-4 * rng.standard_normal((20, 32)).astype(np.float32)
    sims, idx, fallbacks = screened_search(gallery, queries, 5)
    assert fallbacks == 20
    ref_sims, ref_idx = exact(gallery, queries, 5)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    # equal float32 scores may come in either order; the scores themselves are exact
    assert np.all(np.diff(sims, axis=1) <= 0)


def test_knn_search_dispatches_large_exact_searches_to_the_screen(monkeypatch):
    rng = np.random.default_rng(3)
    gallery = rng.standard_normal((2000, 16)).astype(np.float32)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    plain = knn_search(gallery, queries, k=8)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return screened.screened_search(*args, **kwargs)

    monkeypatch.setattr(screened, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(screened, "MIN_PAIRS", 1)
    monkeypatch.setattr(knn, "screened_search", spy)
    fast = knn_search(gallery, queries, k=8)
    assert calls == [(2000, 16)]
    np.testing.assert_array_equal(np.sort(fast[1], 1), np.sort(plain[1], 1))
    np.testing.assert_allclose(fast[0], plain[0], atol=2e-6)
    # too small a gallery for the screen (G <= 2 x candidates): the float32 path
    knn_search(gallery[: 2 * candidates(8)], queries, k=8)
    # the approximate index never goes through the screen
    knn_search(gallery, queries, k=8, index="ivf")
    assert len(calls) == 1
