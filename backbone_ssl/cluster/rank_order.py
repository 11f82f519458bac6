"""Approximate rank-order clustering (Otto, Wang & Jain, "Clustering millions of faces by
identity", TPAMI 2018, arXiv 1604.00989, Algorithm 1), vectorised over the shared kNN graph.

Each face ``a`` has the ranked list ``O_a = [a, n_1, ..., n_k]`` (itself first, as in the paper,
then its ``k`` nearest neighbours). For a face ``b`` in ``O_a`` at rank ``O_a(b)``:

    d(a, b) = sum_{i=0}^{O_a(b)} I_b(O_a(i))          I_b(x) = 0 if x in O_b else 1
    D(a, b) = (d(a, b) + d(b, a)) / min(O_a(b), O_b(a))

where ``d(b, a)`` runs over ``O_b`` up to ``a``'s rank there, or over all of ``O_b`` when ``a`` is
not in it (then ``O_b(a)`` is taken as ``k + 1``, "beyond the list"). Only pairs inside someone's
top-k are considered (the "approximate" part: the neighbour lists come from a kNN search, and
only the presence of a face in a list is counted, not its rank). Pairs with ``D < threshold`` are
merged transitively (connected components). Cost ``O(N k^3)`` comparisons, done in row chunks.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

#: rows per vectorised chunk (``chunk * k * (k+1)^2`` booleans at a time)
CHUNK = 2048


def ranked_lists(idx: np.ndarray) -> np.ndarray:
    """``[N, k]`` neighbours (self excluded, ``-1`` missing) -> ``[N, k+1]`` lists ``O_a`` with
    the face itself first; a missing neighbour is replaced by the face itself (no edge)."""
    n = idx.shape[0]
    own = np.arange(n, dtype=np.int64)[:, None]
    return np.concatenate([own, np.where(idx >= 0, idx, own)], axis=1)


def _in_list(values: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """``values [..., m]``, ``lists [..., L]`` -> ``[..., m]`` bool: ``values[..., i] in lists``."""
    return (values[..., :, None] == lists[..., None, :]).any(axis=-1)


def rank_order_distances(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised rank-order distance ``D(a, b)`` of every kNN pair (``b`` in ``O_a``).

    ``idx [N, k]`` int64 (see :class:`~backbone_ssl.cluster.graph.KnnGraph`). Returns
    ``(a [E], b [E], D [E] float64)`` with ``E = N k`` minus missing neighbours.
    """
    lists = ranked_lists(np.asarray(idx, dtype=np.int64))
    n, k1 = lists.shape
    k = k1 - 1
    out_a, out_b, out_d = [], [], []
    for start in range(0, n, CHUNK):
        la = lists[start:start + CHUNK]  # [c, k+1]   O_a
        b = la[:, 1:]  # [c, k]     the neighbours b of a, O_a(b) = j + 1
        lb = lists[b]  # [c, k, k+1] O_b
        # d(a, b): faces of O_a up to b's rank that are missing from O_b
        a_not_in_b = ~_in_list(np.broadcast_to(la[:, None, :], lb.shape), lb)  # [c, k, k+1]
        rank_ab = np.arange(1, k + 1)  # O_a(b)
        d_ab = np.cumsum(a_not_in_b, axis=2)[:, np.arange(k), rank_ab]  # [c, k]
        # d(b, a): faces of O_b up to a's rank there (all of O_b when a is not in it)
        b_not_in_a = ~_in_list(lb, np.broadcast_to(la[:, None, :], lb.shape))  # [c, k, k+1]
        a_ids = la[:, :1, None]  # [c, 1, 1]
        at = lb == a_ids  # [c, k, k+1]
        found = at.any(axis=2)
        rank_ba = np.maximum(np.where(found, at.argmax(axis=2), k + 1), 1)  # O_b(a); b == a: masked
        cum_ba = np.cumsum(b_not_in_a, axis=2)
        d_ba = np.take_along_axis(cum_ba, np.minimum(rank_ba, k)[..., None], axis=2)[..., 0]
        dist = (d_ab + d_ba) / np.minimum(rank_ab[None, :], rank_ba)
        real = b != la[:, :1]  # a missing neighbour was replaced by the face itself
        out_a.append(np.broadcast_to(la[:, :1], b.shape)[real])
        out_b.append(b[real])
        out_d.append(dist[real].astype(np.float64))
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_d)


def rank_order_cluster(idx: np.ndarray, threshold: float = 1.6,
                       top: int | None = None) -> np.ndarray:
    """Cluster labels ``[N]`` int64: faces joined by a pair with ``D < threshold`` share one.

    ``top`` shortens the neighbour lists to their first ``top`` entries (``None``: all ``k``).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if top:
        idx = idx[:, :top]
    n = idx.shape[0]
    a, b, dist = rank_order_distances(idx)
    keep = dist < threshold
    graph = sp.coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)
