"""The kNN graph every clustering method shares: built once per run with faiss.

Exact cosine search (:func:`backbone_ssl.evaluation.knn.knn_search`, faiss ``IndexFlatIP`` or the
bfloat16-screened exact search) up to ``graph.exact_max`` faces; above it an approximate index,
IVF (:func:`backbone_ssl.evaluation.knn.build_index`) or HNSW (``faiss.IndexHNSWFlat``), whose
recall@k against exact search is measured on a seeded sample of faces, as ``eval`` does for IVF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from backbone_ssl.cluster.config import GraphConfig
from backbone_ssl.evaluation.knn import build_index, default_nprobe, knn_search
from backbone_ssl.evaluation.normalize import l2_normalize


@dataclass
class KnnGraph:
    """``idx [N, k]`` int64 neighbours of each face (itself excluded, most similar first; ``-1``
    where an approximate search found fewer) and their cosine ``sims [N, k]`` float32."""

    idx: np.ndarray
    sims: np.ndarray
    index: str  # flat | ivf | hnsw
    recall: float | None  # recall@k of the approximate search on a sample (None: exact)
    seconds: float

    @property
    def n(self) -> int:
        return int(self.idx.shape[0])

    @property
    def k(self) -> int:
        return int(self.idx.shape[1])

    def edges(self, min_sim: float = -1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Undirected edge list ``(src, dst, sim)`` with ``src < dst``, each pair once (the
        larger similarity when both directions were found), ``sim >= min_sim``."""
        rows = np.repeat(np.arange(self.n), self.k)
        cols, sims = self.idx.reshape(-1), self.sims.reshape(-1)
        keep = (cols >= 0) & (cols != rows) & (sims >= min_sim)
        a, b, s = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], sims[keep]
        order = np.lexsort((-s, b, a))
        a, b, s = a[order], b[order], s[order]
        first = np.ones(len(a), dtype=bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        return a[first], b[first], s[first]

    def adjacency(self, min_sim: float = -1.0, value: str = "sim") -> sp.csr_matrix:
        """Symmetric sparse ``[N, N]`` matrix over :meth:`edges`: ``value="sim"`` cosine
        similarity, ``"distance"`` cosine distance ``1 - sim`` (kept strictly positive so a
        sparse matrix does not drop it), ``"ones"`` connectivity."""
        a, b, s = self.edges(min_sim)
        if value == "distance":
            w = np.maximum(1.0 - s.astype(np.float64), 1e-9)
        elif value == "ones":
            w = np.ones(len(a))
        else:
            w = s.astype(np.float64)
        m = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([a, b]),
                                                    np.concatenate([b, a]))), shape=(self.n,) * 2)
        return m.tocsr()


def _drop_self(idx: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[N, k+1]`` results -> ``[N, k]`` without each row's own index (the last column goes
    when a row did not find itself, e.g. among exact duplicates)."""
    n = idx.shape[0]
    is_self = idx == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), idx.shape[1] - 1)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(n), drop] = False
    return idx[keep].reshape(n, -1)[:, :k], sims[keep].reshape(n, -1)[:, :k]


def _approx_index(feats: np.ndarray, cfg: GraphConfig, kind: str) -> faiss.Index:
    """A built IVF or HNSW inner-product index over the normalised ``feats``."""
    if kind == "ivf":
        index = build_index(feats, "ivf", seed=cfg.seed)
        index.nprobe = cfg.nprobe if cfg.nprobe > 0 else default_nprobe(index.nlist)
        return index
    index = faiss.IndexHNSWFlat(feats.shape[1], cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = max(cfg.hnsw_ef_search, cfg.k + 1)
    index.add(l2_normalize(feats))
    return index


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray) -> float:
    """Mean fraction of each row's exact neighbours ``[Q, k]`` found in ``approx_idx [Q, k]``."""
    hits = [len(set(a[a >= 0]) & set(e)) / max(1, len(e)) for a, e in zip(approx_idx, exact_idx)]
    return float(np.mean(hits)) if hits else 1.0


def index_kind(n: int, cfg: GraphConfig) -> str:
    """The index ``cfg`` picks for ``n`` faces."""
    if cfg.index != "auto":
        return cfg.index
    return "flat" if n <= cfg.exact_max else cfg.approx


def build_knn_graph(feats: np.ndarray, cfg: GraphConfig) -> KnnGraph:
    """The kNN graph of ``feats [N, D]`` (cosine); ``N`` must exceed ``cfg.k``."""
    t0 = time.perf_counter()
    feats = l2_normalize(feats)
    n, k = feats.shape[0], int(cfg.k)
    if n <= k:
        raise ValueError(f"{n} faces for k={k} neighbours")
    kind = index_kind(n, cfg)
    recall = None
    if kind == "flat":
        sims, idx = knn_search(feats, feats, k + 1)
    else:
        faiss.omp_set_num_threads(torch.get_num_threads())
        index = _approx_index(feats, cfg, kind)
        sims, idx = index.search(feats, k + 1)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(
            n, min(n, cfg.recall_sample), replace=False))
        _, exact = knn_search(feats, feats[sample], k + 1)
        a_idx, _ = _drop_self(idx[sample], sims[sample], k)
        e_idx, _ = _drop_self(exact, exact.astype(np.float32), k)
        recall = recall_at_k(a_idx, e_idx)
    sims = np.where(idx >= 0, sims, -np.inf).astype(np.float32)
    idx, sims = _drop_self(idx.astype(np.int64), sims, k)
    return KnnGraph(idx=np.ascontiguousarray(idx), sims=np.ascontiguousarray(sims), index=kind,
                    recall=recall, seconds=time.perf_counter() - t0)
