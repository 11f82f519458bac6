"""Cosine k-nearest-neighbour evaluation with faiss (inner product on unit vectors).

The default search is exact: faiss ``IndexFlatIP``, or for large searches on CPUs with native
bfloat16 the screened search of :mod:`backbone_ssl.evaluation.screened` (same result, about 3x
faster). ``index="ivf"`` is faiss's inverted-file index (``IndexIVFFlat``: k-means cells, only
the ``nprobe`` closest cells are scanned), an approximate search for galleries of about a million
vectors and more, where exact search is bound by the ``Q x G x D`` matrix product
(benchmarks/RESULTS.md). Its recall is measured there.

The weighted vote follows Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), as used by DINO (Caron et al., 2021): each of the ``k`` nearest
gallery features votes for its class with weight ``exp(sim / t)``.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from backbone_ssl.evaluation.normalize import l2_normalize
from backbone_ssl.evaluation.screened import screened_search, use_screening

#: Gallery rows normalised and added to the index at a time (64 MB of float32 at d=256).
GALLERY_CHUNK = 65536


#: Index kinds accepted by :func:`knn_search`.
KNN_INDEXES = ("flat", "ivf")
#: IVF: k-means training points per cell (faiss warns below 39).
IVF_TRAIN_PER_LIST = 64


def ivf_lists(n_gallery: int) -> int:
    """Default number of IVF cells for ``n_gallery`` vectors: about ``sqrt(G)``, at least 39
    training points per cell (1M -> 1000 cells)."""
    return max(1, min(int(round(math.sqrt(n_gallery))), n_gallery // 39))


def default_nprobe(nlist: int) -> int:
    """Cells scanned per query by default: 1/32 of them, at least 8 (or all, if fewer)."""
    return min(nlist, max(8, math.ceil(nlist / 32)))


def _add_normalized(index: faiss.Index, gallery: np.ndarray) -> None:
    """Add ``gallery`` rows to ``index`` L2-normalised, ``GALLERY_CHUNK`` rows at a time: no
    second full copy of a large gallery (benchmarks/RESULTS.md: -1.4 GB peak RSS at 1M x 512)."""
    for start in range(0, gallery.shape[0], GALLERY_CHUNK):
        index.add(l2_normalize(gallery[start:start + GALLERY_CHUNK]))


def build_index(gallery: np.ndarray, index: str = "flat", nlist: int | None = None,
                seed: int = 0) -> faiss.Index:
    """A faiss inner-product index over the L2-normalised rows of ``gallery`` ``[G, D]``.

    ``index="flat"``: exact. ``index="ivf"``: ``IndexIVFFlat`` with ``nlist`` cells (default
    :func:`ivf_lists`), trained by spherical k-means on ``IVF_TRAIN_PER_LIST * nlist`` rows drawn
    with ``seed`` (same gallery and seed -> same index).
    """
    if index not in KNN_INDEXES:
        raise ValueError(f"unknown kNN index {index!r} (choose from {', '.join(KNN_INDEXES)})")
    dim = gallery.shape[1]
    if index == "flat":
        flat = faiss.IndexFlatIP(dim)
        _add_normalized(flat, gallery)
        return flat
    nlist = ivf_lists(gallery.shape[0]) if nlist is None else max(1, int(nlist))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.spherical, ivf.cp.seed = True, int(seed)
    n_train = min(gallery.shape[0], IVF_TRAIN_PER_LIST * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(gallery.shape[0], n_train, replace=False))
    ivf.train(l2_normalize(gallery[rows]))
    _add_normalized(ivf, gallery)
    return ivf


def knn_search(gallery: np.ndarray, queries: np.ndarray, k: int, index: str = "flat",
               nprobe: int | None = None, nlist: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cosine search of ``queries`` ``[Q, D]`` against ``gallery`` ``[G, D]``.

    Exact by default (large searches on CPUs with native bfloat16 are screened in bfloat16 and
    certified in float32, same result: :mod:`backbone_ssl.evaluation.screened`); ``index="ivf"``
    is approximate (``nlist`` cells, ``nprobe`` of them scanned
    per query; defaults :func:`ivf_lists`, :func:`default_nprobe`), see :func:`build_index`.
    Returns ``(sims [Q, k'], idx [Q, k'])`` with ``k' = min(k, G)``, most similar first;
    ``sims`` float32 cosine similarities, ``idx`` int64 rows of ``gallery`` (an IVF search that
    finds fewer than ``k'`` neighbours pads with ``sims=-inf``, ``idx=-1``).
    """
    gallery, queries = np.asarray(gallery), l2_normalize(queries)
    if gallery.shape[1] != queries.shape[1]:
        raise ValueError(f"feature sizes differ: gallery {gallery.shape}, queries {queries.shape}")
    k = max(1, min(int(k), gallery.shape[0]))
    faiss.omp_set_num_threads(torch.get_num_threads())
    if index == "flat" and use_screening(len(queries), gallery.shape[0], k):
        sims, idx, _ = screened_search(gallery, queries, k)  # exact, bfloat16-screened
        return sims, idx
    built = build_index(gallery, index, nlist)
    if index == "ivf":
        built.nprobe = default_nprobe(built.nlist) if nprobe is None else max(1, int(nprobe))
    sims, idx = built.search(queries, k)
    sims = sims.astype(np.float32)
    sims[idx < 0] = -np.inf
    return sims, idx.astype(np.int64)


def knn_neighbours(
    train_feats: np.ndarray, test_feats: np.ndarray, k: int, index: str = "flat",
    nprobe: int | None = None, nlist: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest training rows for each test row: ``(sims [Q, k'], idx [Q, k'])`` (see knn_search)."""
    return knn_search(train_feats, test_feats, k, index=index, nprobe=nprobe, nlist=nlist)


def class_scores(
    sims: np.ndarray, neighbour_labels: np.ndarray, t: float, num_classes: int
) -> np.ndarray:
    """Temperature-weighted votes: ``[Q, C]`` float64, ``score[q, c] = sum exp(sim/t)`` over
    the neighbours of ``q`` labelled ``c`` (computed relative to each row's best similarity,
    which rescales a row and leaves its ranking unchanged). Entries with label ``-1`` or a
    non-finite similarity (no neighbour found) do not vote."""
    sims = sims.astype(np.float64)
    found = (neighbour_labels >= 0) & np.isfinite(sims)  # label -1 / sim -inf: no neighbour
    best = np.where(found, sims, -np.inf).max(axis=1, keepdims=True)
    weights = np.where(found, np.exp((sims - np.where(np.isfinite(best), best, 0.0)) / t), 0.0)
    scores = np.zeros((sims.shape[0], num_classes), dtype=np.float64)
    rows = np.repeat(np.arange(sims.shape[0]), sims.shape[1])
    labels = np.where(found, neighbour_labels, 0)
    np.add.at(scores, (rows, labels.reshape(-1)), weights.reshape(-1))
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
    idx = idx[:, :k]
    # an approximate (IVF) search may find fewer than k neighbours: idx -1, label -1
    neighbour_labels = np.where(idx >= 0, train_labels[np.maximum(idx, 0)], -1)
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
