"""Cosine k-nearest-neighbour evaluation with faiss (exact inner product on unit vectors).

The weighted vote follows Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), as used by DINO (Caron et al., 2021): each of the ``k`` nearest
gallery features votes for its class with weight ``exp(sim / t)``.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

#: Gallery rows normalised and added to the index at a time (64 MB of float32 at d=256).
GALLERY_CHUNK = 65536


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` ``[N, D]`` scaled to unit L2 norm; float32, C-contiguous ``[N, D]``."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, eps), dtype=np.float32)


def knn_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine search of ``queries`` ``[Q, D]`` against ``gallery`` ``[G, D]``.

    Returns ``(sims [Q, k'], idx [Q, k'])`` with ``k' = min(k, G)``, most similar first;
    ``sims`` float32 cosine similarities, ``idx`` int64 rows of ``gallery``.
    """
    gallery, queries = np.asarray(gallery), l2_normalize(queries)
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"feature sizes differ: gallery {gallery.shape}, queries {queries.shape}")
    k = max(1, min(int(k), gallery.shape[0]))
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(gallery.shape[1])
    # normalise in chunks as they go into the index: no second full copy of a large gallery
    # (benchmarks/RESULTS.md: -1.4 GB peak RSS at 1M x 512)
    for start in range(0, gallery.shape[0], GALLERY_CHUNK):
        index.add(l2_normalize(gallery[start:start + GALLERY_CHUNK]))
    sims, idx = index.search(queries, k)
    return sims.astype(np.float32), idx.astype(np.int64)


def knn_neighbours(
    train_feats: np.ndarray, test_feats: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training rows for each test row: ``(sims [Q, k'], idx [Q, k'])`` (see knn_search)."""
    return knn_search(train_feats, test_feats, k)


def class_scores(
    sims: np.ndarray, neighbour_labels: np.ndarray, t: float, num_classes: int
) -> np.ndarray:
    """Temperature-weighted votes: ``[Q, C]`` float64, ``score[q, c] = sum exp(sim/t)`` over
    the neighbours of ``q`` labelled ``c`` (computed relative to each row's best similarity,
    which rescales a row and leaves its ranking unchanged)."""
    sims = sims.astype(np.float64)
    weights = np.exp((sims - sims[:, :1]) / t)
    scores = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(sims.shape[0]), sims.shape[1])
    np.add.at(scores, (rows, neighbour_labels.reshape(-1)), weights.reshape(-1))
    return scores


def knn_scores(
    sims: np.ndarray,
    idx: np.ndarray,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    t: float = 0.07,
    num_classes: int | None = None,
) -> dict[str, float | int]:
    """kNN accuracies from precomputed neighbours ``sims``/``idx`` ``[Q, >=k']``.

    Returns ``{"k", "t", "top1", "top5", "nn1"}``: ``k`` is the number of neighbours actually used
    (clipped to the gallery size), top-5 is clipped to ``num_classes`` and only counts classes
    that received a vote, ``nn1`` is plain
    1-nearest-neighbour accuracy. Accuracies are python floats in [0, 1].
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    if num_classes is None:
        num_classes = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    k = max(1, min(int(k), len(train_labels), idx.shape[1]))
    neighbour_labels = train_labels[idx[:, :k]]
    scores = class_scores(sims[:, :k], neighbour_labels, t, num_classes)
    ranking = np.argsort(-scores, axis=1, kind="stable")
    top = min(5, num_classes)
    # A class no neighbour voted for never counts as a hit, whatever its place among the zeros.
    voted = (neighbour_labels == test_labels[:, None]).any(axis=1)
    hits = (ranking[:, :top] == test_labels[:, None]) & voted[:, None]
    return {
        "k": k,
        "t": float(t),
        "top1": float(hits[:, 0].mean()),
        "top5": float(hits.any(axis=1).mean()),
        "nn1": float((neighbour_labels[:, 0] == test_labels).mean()),
    }


def knn_classify(
    train_feats: np.ndarray,
    train_labels: np.ndarray,
    test_feats: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    t: float = 0.07,
    num_classes: int | None = None,
) -> dict[str, float | int]:
    """Weighted kNN classification of ``test_feats`` ``[Q, D]`` by ``train_feats`` ``[G, D]``.

    Labels are int arrays ``[G]`` / ``[Q]`` over the same class indices. Returns
    ``{"k", "t", "top1", "top5", "nn1"}`` (see :func:`knn_scores`).
    """
    sims, idx = knn_neighbours(train_feats, test_feats, k)
    return knn_scores(sims, idx, train_labels, test_labels, k, t, num_classes)
