"""Clustering: scores against hand-computed values, rank-order on a constructed graph, the kNN
graph, and every method on well-separated blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from backbone_ssl.cluster.config import METHODS, GraphConfig, MethodsConfig
from backbone_ssl.cluster.graph import _drop_self, build_knn_graph
from backbone_ssl.cluster.methods import confidence, relabel, run_method
from backbone_ssl.cluster.rank_order import rank_order_cluster, rank_order_distances
from backbone_ssl.cluster.scores import bcubed_prf, cluster_scores, pairwise_prf

LABELS = np.array([0, 0, 0, 1, 1])
CLUSTERS = np.array([7, 7, 3, 3, 3])


def test_pairwise_scores_by_hand():
    # n_ij: id0 -> (2 in c7, 1 in c3), id1 -> 2 in c3. TP = 1 + 0 + 1 = 2 pairs;
    # predicted pairs C(2,2) + C(3,2) = 4; true pairs C(3,2) + C(2,2) = 4
    p, r, f = pairwise_prf(LABELS, CLUSTERS)
    assert (p, r, f) == pytest.approx((0.5, 0.5, 0.5))
    p, r, f = pairwise_prf(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]))
    assert (p, r) == pytest.approx((2 / 6, 1.0)) and f == pytest.approx(2 * (1 / 3) / (4 / 3))


def test_bcubed_scores_by_hand():
    # precision: (2^2/2 + 1^2/3 + 2^2/3) / 5 = 11/15; recall: (2^2/3 + 1^2/3 + 2^2/2) / 5 = 11/15
    p, r, f = bcubed_prf(LABELS, CLUSTERS)
    assert (p, r, f) == pytest.approx((11 / 15, 11 / 15, 11 / 15))
    # everything alone: precision 1, recall = mean 1/|identity| = (3 * 1/3 + 2 * 1/2) / 5
    p, r, _ = bcubed_prf(LABELS, np.arange(5))
    assert (p, r) == pytest.approx((1.0, 2 / 5))


def test_cluster_scores_nmi_counts_and_unlabelled():
    s = cluster_scores(LABELS, CLUSTERS)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(LABELS, CLUSTERS))
    assert (s["n_clusters"], s["n_identities"], s["scored"]) == (2, 2, 5)
    perfect = cluster_scores(np.array([0, 0, 1, 1, -1]), np.array([5, 5, 2, 2, 2]))
    assert perfect["pairwise_f"] == perfect["bcubed_f"] == pytest.approx(1.0)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["unlabelled"] == 1
    singles = cluster_scores(LABELS, np.arange(5))
    assert singles["pairwise_precision"] == 1.0 and singles["pairwise_recall"] == 0.0


# ---- rank-order ------------------------------------------------------------------------------
# lists O_a (itself first): O0=[0,1,2] O1=[1,0,2] O2=[2,3,0] O3=[3,2,1]
GRAPH = np.array([[1, 2], [0, 2], [3, 0], [2, 1]])
# by hand (module docstring): D(0,1)=0, D(0,2)=(1+1)/2, D(1,0)=0, D(1,2)=(1+1)/min(2,3),
# D(2,3)=0, D(2,0)=(1+1)/2, D(3,2)=0, D(3,1)=(1+1)/min(2,3)
EXPECTED = {(0, 1): 0.0, (0, 2): 1.0, (1, 0): 0.0, (1, 2): 1.0,
            (2, 3): 0.0, (2, 0): 1.0, (3, 2): 0.0, (3, 1): 1.0}


def test_rank_order_distances_by_hand():
    a, b, d = rank_order_distances(GRAPH)
    got = {(int(x), int(y)): float(v) for x, y, v in zip(a, b, d)}
    assert got == pytest.approx(EXPECTED)


def test_rank_order_asymmetric_lists():
    # 0 lists 1 at rank 2 after 2; 1 lists neither 0 nor 2's list members
    idx = np.array([[2, 1], [3, 4], [0, 1], [4, 1], [3, 1]])
    a, b, d = rank_order_distances(idx)
    got = {(int(x), int(y)): float(v) for x, y, v in zip(a, b, d)}
    # O0=[0,2,1], O1=[1,3,4]: d(0,1) = [0 notin O1] + [2 notin] + [1 in] = 2; 0 not in O1 ->
    # d(1,0) over all of O1 against O0: [1 in] + [3 notin] + [4 notin] = 2; D = 4 / min(2, 3)
    assert got[(0, 1)] == pytest.approx(2.0)
    # O3=[3,4,1], O4=[4,3,1]: d(3,4)=0, d(4,3)=0 -> 0
    assert got[(3, 4)] == 0.0


def test_rank_order_threshold_merges():
    assert rank_order_cluster(GRAPH, 0.5).tolist() == [0, 0, 1, 1]
    assert len(set(rank_order_cluster(GRAPH, 1.5).tolist())) == 1
    with_missing = np.array([[1, -1], [0, -1], [3, -1], [2, -1]])  # -1: no neighbour found
    assert rank_order_cluster(with_missing, 0.5).tolist() == [0, 0, 1, 1]


# ---- graph and methods -----------------------------------------------------------------------
def blobs(n_id: int = 6, per: int = 15, dim: int = 32, noise: float = 0.08, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_id, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_id * per, dim))
    return x.astype(np.float32), np.repeat(np.arange(n_id), per)


def test_exact_graph_matches_brute_force_and_excludes_self():
    x, _ = blobs()
    g = build_knn_graph(x, GraphConfig(k=5))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    brute = np.argsort(-sim, axis=1)[:, :5]
    assert g.index == "flat" and g.recall is None
    assert (np.sort(g.idx, 1) == np.sort(brute, 1)).all()
    assert np.allclose(g.sims, np.take_along_axis(sim, g.idx, 1), atol=1e-5)
    a, b, s = g.edges()
    assert (a < b).all() and len(set(zip(a.tolist(), b.tolist()))) == len(a)


def test_drop_self_when_self_is_not_first():
    idx = np.array([[3, 0, 2], [1, 2, 0]])
    out, sims = _drop_self(idx, idx.astype(np.float32), 2)
    assert out.tolist() == [[3, 2], [2, 0]]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_graph_reports_recall(kind):
    x, _ = blobs(n_id=20, per=30, dim=16)
    g = build_knn_graph(x, GraphConfig(k=5, index=kind, recall_sample=100))
    assert g.index == kind and 0.8 <= g.recall <= 1.0
    assert (g.idx != np.arange(len(x))[:, None]).all()


def test_auto_index_switches_above_exact_max():
    x, _ = blobs(n_id=20, per=30, dim=16)
    g = build_knn_graph(x, GraphConfig(k=5, exact_max=100, approx="hnsw", recall_sample=50))
    assert g.index == "hnsw" and g.recall is not None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_recovers_separated_blobs(method):
    x, y = blobs()
    g = build_knn_graph(x, GraphConfig(k=8))
    labels = run_method(method, x, g, MethodsConfig(rank_order_threshold=1.0), seed=0)
    s = cluster_scores(y, labels)
    assert s["pairwise_f"] > 0.95 and s["bcubed_f"] > 0.95, s
    assert s["n_clusters"] == 6
    conf = confidence(g, labels)
    assert conf.shape == (len(x),) and conf.min() > 0.9


def test_relabel_orders_by_size_and_splits_noise():
    out = relabel(np.array([5, 5, -1, 2, 2, 2, -1]))
    assert out.tolist() == [1, 1, 2, 0, 0, 0, 3]
