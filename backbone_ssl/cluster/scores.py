"""Clusters against identities, as in the face-clustering literature (learn-to-cluster: Yang et
al., "Learning to Cluster Faces on an Affinity Graph", CVPR 2019; its ``evaluation/metrics.py``).

With ``n_ij`` faces of identity ``i`` in cluster ``j``, ``a_i = sum_j n_ij``, ``b_j = sum_i n_ij``:

- pairwise: precision ``sum C(n_ij, 2) / sum C(b_j, 2)``, recall ``sum C(n_ij, 2) / sum C(a_i, 2)``
  (pairs of faces put together / that belong together);
- BCubed (Bagga & Baldwin 1998): precision ``sum n_ij^2 / b_j / N``, recall ``sum n_ij^2 / a_i / N``
  (per face: share of its cluster with its identity / of its identity in its cluster);
- NMI: scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean);
- the number of clusters against the number of identities.

A precision with no pair to judge (every cluster a singleton) is 1; F is the harmonic mean.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import normalized_mutual_info_score


def _f(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def contingency(labels: np.ndarray, clusters: np.ndarray) -> sp.csr_matrix:
    """Sparse ``[identities, clusters]`` counts ``n_ij`` (float64)."""
    _, li = np.unique(np.asarray(labels), return_inverse=True)
    _, ci = np.unique(np.asarray(clusters), return_inverse=True)
    return sp.coo_matrix((np.ones(len(li)), (li.reshape(-1), ci.reshape(-1))),
                         shape=(li.max() + 1, ci.max() + 1)).tocsr()


def pairwise_prf(labels: np.ndarray, clusters: np.ndarray) -> tuple[float, float, float]:
    """Pairwise precision, recall, F of ``clusters [N]`` against ``labels [N]``."""
    c = contingency(labels, clusters)
    nij = c.data
    tp = float((nij * (nij - 1) / 2).sum())
    a, b = np.asarray(c.sum(axis=1)).ravel(), np.asarray(c.sum(axis=0)).ravel()
    pred, true = float((b * (b - 1) / 2).sum()), float((a * (a - 1) / 2).sum())
    p = tp / pred if pred else 1.0
    r = tp / true if true else 1.0
    return p, r, _f(p, r)


def bcubed_prf(labels: np.ndarray, clusters: np.ndarray) -> tuple[float, float, float]:
    """BCubed precision, recall, F of ``clusters [N]`` against ``labels [N]``."""
    c = contingency(labels, clusters).tocoo()
    n = float(c.data.sum())
    a, b = np.asarray(c.sum(axis=1)).ravel(), np.asarray(c.sum(axis=0)).ravel()
    sq = c.data ** 2
    p = float((sq / b[c.col]).sum() / n)
    r = float((sq / a[c.row]).sum() / n)
    return p, r, _f(p, r)


def cluster_scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float | int]:
    """Every score above, as JSON-ready python numbers; faces with ``labels < 0`` (unknown, e.g.
    a false detection) are left out and counted in ``unlabelled``."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    known = labels >= 0
    lab, clu = labels[known], clusters[known]
    out: dict[str, float | int] = {"scored": int(known.sum()),
                                   "unlabelled": int((~known).sum())}
    if not len(lab):
        return out
    pp, pr, pf = pairwise_prf(lab, clu)
    bp, br, bf = bcubed_prf(lab, clu)
    out.update(pairwise_precision=pp, pairwise_recall=pr, pairwise_f=pf,
               bcubed_precision=bp, bcubed_recall=br, bcubed_f=bf,
               nmi=float(normalized_mutual_info_score(lab, clu)),
               n_clusters=int(len(np.unique(clu))), n_identities=int(len(np.unique(lab))))
    return out
