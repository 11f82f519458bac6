"""Exact cosine top-k, screened in bfloat16 and certified in float32.

Exact kNN over a large gallery is one ``[Q, D] x [D, G]`` matrix product. On CPUs with native
bfloat16 dot products (AVX512-BF16, AMX) that product runs about 3x faster in bfloat16 than in
float32 (benchmarks/RESULTS.md: 524 vs 159 GFLOP/s on 2 cores), but bfloat16 keeps 8 significant
bits. The search below stays exact anyway:

1. **screen**: unit-norm queries and gallery rows rounded to bfloat16; for each query the
   ``m`` best rows by bfloat16 score are kept (``m = max(2k, k + 64)``);
2. **rerank**: the kept rows are scored again in float32 from the original features; the top
   ``k`` of those is the answer *if* no discarded row can beat it;
3. **certify**: a discarded row's true score is at most its bfloat16 score plus a rigorous error
   bound ``eps(q) = |q - q'| + |q'| max|x - x'| + 2^-7 + 1e-4`` (input rounding, bfloat16 output
   rounding of a score of magnitude <= ~1, float32 accumulation); a query is certified when the
   lowest kept bfloat16 score plus ``eps(q)`` is below its k-th float32 score;
4. **fallback**: the few queries that are not certified are searched again with faiss's exact
   float32 ``IndexFlatIP``, gallery chunk by gallery chunk.

The result equals a float32 exhaustive search (up to float32 rounding of the reported scores).
"""

from __future__ import annotations

import functools
import logging
import platform

import faiss
import numpy as np
import torch

from backbone_ssl.evaluation.normalize import l2_normalize

log = logging.getLogger(__name__)

#: Extra candidates kept per query beyond ``k`` (at least ``2k`` in all).
SCREEN_EXTRA = 64
#: Query rows per bfloat16 product / gallery rows per product and per normalisation chunk.
QUERY_CHUNK, GALLERY_CHUNK = 2048, 65536
#: Queries reranked at a time (``[256, m, D]`` float32 candidate rows).
RERANK_CHUNK = 256
#: Below this many query x gallery pairs the plain float32 search is used (setup not worth it).
MIN_PAIRS = 50_000_000
#: Bound on bfloat16 output rounding (2^-8 relative, doubled) plus float32 accumulation error.
OUTPUT_ERROR, ACCUMULATION_ERROR = 2.0 ** -7, 1e-4


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 ``avx512_bf16`` / ``amx_bf16`` flags);
    elsewhere torch emulates it and the screen would be slower than float32."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_screening(n_queries: int, n_gallery: int, k: int) -> bool:
    """Screen in bfloat16 when the CPU supports it and the search is large enough to gain."""
    return (cpu_has_fast_bf16() and n_queries * n_gallery >= MIN_PAIRS
            and n_gallery > 2 * candidates(k))


def candidates(k: int) -> int:
    """Rows kept per query by the bfloat16 screen."""
    return max(2 * k, k + SCREEN_EXTRA)


def merge_topk(values: torch.Tensor, index: torch.Tensor, more_values: torch.Tensor,
               more_index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of two candidate sets ``[Q, a]`` + ``[Q, b]`` (values, int64 indices)."""
    v = torch.cat([values, more_values], 1)
    best_v, pos = v.topk(min(k, v.shape[1]), dim=1)
    return best_v, torch.cat([index, more_index], 1).gather(1, pos)


def _normalize(x: np.ndarray) -> torch.Tensor:
    """Rows of ``x`` ``[N, D]`` as a unit-norm float32 tensor (:func:`l2_normalize`)."""
    return torch.from_numpy(l2_normalize(x))


def _bf16_gallery(gallery: np.ndarray) -> tuple[torch.Tensor, float]:
    """``(unit rows in bfloat16 [G, D], max row rounding error)`` built chunk by chunk."""
    out = torch.empty(gallery.shape, dtype=torch.bfloat16)
    worst = 0.0
    for start in range(0, gallery.shape[0], GALLERY_CHUNK):
        x = _normalize(gallery[start:start + GALLERY_CHUNK])
        xb = x.to(torch.bfloat16)
        out[start:start + len(x)] = xb
        worst = max(worst, float((x - xb.float()).norm(dim=1).max()))
    return out, worst


def flat_search_chunked(gallery: np.ndarray, queries: torch.Tensor, k: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 search of unit ``queries`` ``[Q, D]`` with faiss ``IndexFlatIP``, one
    normalised gallery chunk at a time (memory: one chunk): ``(sims, idx)`` ``[Q, k]``."""
    q = np.ascontiguousarray(queries.numpy())
    best_v = torch.full((len(q), 0), -torch.inf)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, gallery.shape[0], GALLERY_CHUNK):
        chunk = _normalize(gallery[start:start + GALLERY_CHUNK]).numpy()
        index = faiss.IndexFlatIP(chunk.shape[1])
        index.add(chunk)
        v, i = index.search(q, min(k, len(chunk)))
        best_v, best_i = merge_topk(best_v, best_i, torch.from_numpy(v),
                                    torch.from_numpy(i.astype(np.int64)) + start, k)
    return best_v, best_i


def _rerank(gallery: np.ndarray, q: torch.Tensor, cand: torch.Tensor, k: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 scores of candidate rows ``cand`` ``[Q, m]`` for unit queries ``q`` ``[Q, D]``;
    the best ``k``: ``(sims, idx)`` ``[Q, k]``, most similar first."""
    rows = _normalize(np.take(gallery, cand.reshape(-1).numpy(), axis=0))
    sims = torch.bmm(rows.view(*cand.shape, -1), q.unsqueeze(2)).squeeze(2)  # [Q, m]
    top, pos = sims.topk(k, dim=1)
    return top, cand.gather(1, pos)


def screened_search(gallery: np.ndarray, queries: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact cosine top-``k`` of unit-norm ``queries`` ``[Q, D]`` in ``gallery`` ``[G, D]``.

    Requires ``G > candidates(k)``. Returns ``(sims [Q, k] float32, idx [Q, k] int64,
    fallbacks)``, most similar first; ``fallbacks`` counts the queries searched again in
    float32 because the screen could not certify them.
    """
    m = candidates(k)
    gallery_b, x_err = _bf16_gallery(gallery)
    q_all = _normalize(queries)
    sims_out = torch.empty((len(q_all), k))
    idx_out = torch.empty((len(q_all), k), dtype=torch.int64)
    uncertified: list[torch.Tensor] = []
    for qs in range(0, len(q_all), QUERY_CHUNK):
        q = q_all[qs:qs + QUERY_CHUNK]
        qb = q.to(torch.bfloat16)
        best_v = torch.full((len(q), 0), -torch.inf, dtype=torch.bfloat16)
        best_i = torch.zeros((len(q), 0), dtype=torch.int64)
        for gs in range(0, len(gallery_b), GALLERY_CHUNK):
            s = qb @ gallery_b[gs:gs + GALLERY_CHUNK].T  # [q, g] bfloat16 scores
            v, i = s.topk(min(m, s.shape[1]), dim=1, sorted=False)
            best_v, best_i = merge_topk(best_v, best_i, v, i + gs, m)
        # a discarded row scores at most (lowest kept bfloat16 score) + eps(q)
        eps = ((q - qb.float()).norm(dim=1) + qb.float().norm(dim=1) * x_err
               + OUTPUT_ERROR + ACCUMULATION_ERROR)
        ceiling = best_v.float().min(dim=1).values + eps
        for rs in range(0, len(q), RERANK_CHUNK):
            sl = slice(rs, rs + RERANK_CHUNK)
            top, idx = _rerank(gallery, q[sl], best_i[sl], k)
            sims_out[qs + rs:qs + rs + len(top)] = top
            idx_out[qs + rs:qs + rs + len(top)] = idx
            bad = (ceiling[sl] >= top[:, -1]).nonzero().squeeze(1)
            uncertified.append(bad + qs + rs)
    redo = torch.cat(uncertified)
    if len(redo):
        sims_out[redo], idx_out[redo] = flat_search_chunked(gallery, q_all[redo], k)
    log.info("kNN: bfloat16 screen, %d of %d queries re-searched in float32", len(redo),
             len(q_all))
    return sims_out.numpy(), idx_out.numpy(), int(len(redo))
