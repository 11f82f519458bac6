"""Clustering methods over the shared kNN graph; each returns labels ``[N]`` int64 (every face
in exactly one cluster: noise points of HDBSCAN become singletons).

- ``rank_order``: approximate rank-order (Otto et al. 2017), :mod:`.rank_order`;
- ``leiden``: Leiden community detection (Traag, Waltman & van Eck, Sci. Rep. 2019) on the
  similarity-weighted graph, ``leidenalg.RBConfigurationVertexPartition``;
- ``infomap``: the map equation (Rosvall & Bergstrom, PNAS 2008), two-level, ``infomap``;
- ``hdbscan``: HDBSCAN (Campello et al. 2013), scikit-learn, on the sparse cosine-distance kNN
  graph (``metric="precomputed"``), so it never forms the ``N x N`` matrix;
- ``agglomerative``: scikit-learn ``AgglomerativeClustering`` with the kNN graph as
  connectivity and a distance threshold, run per connected component of that graph (scikit-learn
  would otherwise join the components with ``O(C^2)`` work).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from scipy.sparse.csgraph import connected_components

from backbone_ssl.cluster.config import MethodsConfig
from backbone_ssl.cluster.graph import KnnGraph
from backbone_ssl.cluster.rank_order import rank_order_cluster
from backbone_ssl.evaluation.normalize import l2_normalize


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered ``0..C-1`` by decreasing cluster size (ties: first appearance); a
    negative label (noise) becomes its own singleton cluster."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    noise = labels < 0
    if noise.any():
        labels[noise] = labels.max(initial=-1) + 1 + np.arange(int(noise.sum()))
    uniq, first, inverse, counts = np.unique(labels, return_index=True, return_inverse=True,
                                             return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    return rank[inverse.reshape(-1)]


def cluster_rank_order(feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
                       seed: int) -> np.ndarray:
    return rank_order_cluster(graph.idx, cfg.rank_order_threshold, cfg.rank_order_top or None)


def cluster_leiden(feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
                   seed: int) -> np.ndarray:
    import igraph as ig
    import leidenalg

    a, b, s = graph.edges(cfg.min_sim)
    g = ig.Graph(n=graph.n, edges=np.stack([a, b], axis=1).tolist(), directed=False)
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition,
                                    weights=s.astype(float).tolist(),
                                    resolution_parameter=cfg.leiden_resolution, seed=seed)
    return np.asarray(part.membership, dtype=np.int64)


def cluster_infomap(feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
                    seed: int) -> np.ndarray:
    import infomap

    a, b, s = graph.edges(cfg.min_sim)
    im = infomap.Infomap(two_level=True, silent=True, num_trials=cfg.infomap_trials,
                         seed=max(1, seed + 1))
    im.add_nodes(range(graph.n))
    for u, v, w in zip(a.tolist(), b.tolist(), s.tolist()):
        im.add_link(u, v, max(w, 1e-6))
    im.run()
    modules = im.get_modules()
    return np.asarray([modules.get(i, -1) for i in range(graph.n)], dtype=np.int64)


def _components(graph: KnnGraph) -> list[np.ndarray]:
    """Face indices of each connected component of the (symmetrised) kNN graph."""
    _, comp = connected_components(graph.adjacency(value="ones"), directed=False)
    order = np.argsort(comp, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(comp[order])) + 1)


def _per_component(graph: KnnGraph, fit: Callable[[np.ndarray], np.ndarray],
                   min_size: int = 2) -> np.ndarray:
    """Run ``fit(members) -> labels (-1 noise)`` on each component of ``min_size`` faces or
    more; smaller components are noise (``-1``). Labels are made unique across components."""
    labels = np.full(graph.n, -1, dtype=np.int64)
    next_label = 0
    for members in _components(graph):
        if len(members) < min_size:
            continue
        sub = np.asarray(fit(members), dtype=np.int64)
        labels[members] = np.where(sub >= 0, sub + next_label, -1)
        next_label += int(sub.max(initial=-1)) + 1
    return labels


def cluster_hdbscan(feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
                    seed: int) -> np.ndarray:
    """Per connected component (scikit-learn refuses a disconnected sparse graph). A component
    in which HDBSCAN finds no cluster at all is one cluster: it is already apart from the rest
    (``allow_single_cluster`` instead would let a large component of many identities collapse
    into one: pairwise F 0.008 at 10k faces, benchmarks/bench_cluster.py)."""
    from sklearn.cluster import HDBSCAN

    dist = graph.adjacency(value="distance")
    min_size = max(2, cfg.hdbscan_min_cluster_size)
    min_samples = min(cfg.hdbscan_min_samples or max(1, graph.k // 2), graph.k)

    def fit(members: np.ndarray) -> np.ndarray:
        model = HDBSCAN(metric="precomputed", min_cluster_size=min_size,
                        min_samples=min(min_samples, len(members) - 1),
                        copy=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sub = model.fit_predict(dist[members][:, members])
        return np.zeros_like(sub) if (sub < 0).all() else sub

    labels = _per_component(graph, fit, min_size)
    return attach_noise(graph, labels) if cfg.hdbscan_attach_noise else labels


def attach_noise(graph: KnnGraph, labels: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Noise faces (``-1``) join the cluster of their most similar non-noise kNN neighbour
    (repeated ``rounds`` times, so chains of noise follow); faces with none stay noise."""
    labels = labels.copy()
    for _ in range(rounds):
        noise = np.flatnonzero(labels < 0)
        if not len(noise):
            break
        nb = graph.idx[noise]
        nb_lab = np.where(nb >= 0, labels[np.maximum(nb, 0)], -1)
        has = (nb_lab >= 0).any(axis=1)
        first = (nb_lab >= 0).argmax(axis=1)
        labels[noise[has]] = nb_lab[has, first[has]]
    return labels


def cluster_agglomerative(feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
                          seed: int) -> np.ndarray:
    """Per connected component (scikit-learn would join components with ``O(C^2)`` work)."""
    from sklearn.cluster import AgglomerativeClustering

    conn = graph.adjacency(value="ones")
    x = l2_normalize(feats)
    linkage = cfg.agglomerative_linkage

    def fit(members: np.ndarray) -> np.ndarray:
        model = AgglomerativeClustering(
            n_clusters=None, distance_threshold=cfg.agglomerative_distance, linkage=linkage,
            metric="euclidean" if linkage == "ward" else "cosine",
            connectivity=conn[members][:, members])
        return model.fit_predict(x[members])

    return _per_component(graph, fit)


METHOD_FUNCS: dict[str, Callable[[np.ndarray, KnnGraph, MethodsConfig, int], np.ndarray]] = {
    "rank_order": cluster_rank_order,
    "leiden": cluster_leiden,
    "infomap": cluster_infomap,
    "hdbscan": cluster_hdbscan,
    "agglomerative": cluster_agglomerative,
}


def run_method(name: str, feats: np.ndarray, graph: KnnGraph, cfg: MethodsConfig,
               seed: int = 0) -> np.ndarray:
    """Labels ``[N]`` of method ``name`` (see :data:`METHOD_FUNCS`), :func:`relabel`-ed."""
    return relabel(METHOD_FUNCS[name](feats, graph, cfg, seed))


def confidence(graph: KnnGraph, labels: np.ndarray) -> np.ndarray:
    """Per face ``[N]`` float: similarity-weighted share of its ``k`` neighbours that sit in its
    own cluster (0 for a face none of whose neighbours joined it)."""
    idx = graph.idx
    w = np.where(idx >= 0, np.clip(graph.sims, 0.0, None), 0.0).astype(np.float64)
    same = (idx >= 0) & (labels[np.maximum(idx, 0)] == labels[:, None])
    total = w.sum(axis=1)
    return np.where(total > 0, (w * same).sum(axis=1) / np.maximum(total, 1e-12), 0.0)
