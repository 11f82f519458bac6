"""Exact cosine kNN at scale: our faiss path vs torch matmul + top-k vs scikit-learn brute force.

Random float32 vectors (d=512, seeded), ``--queries`` queries (10k) against 100k and 1M gallery
vectors, k=20. Each case runs in its own subprocess (peak RSS per case); times are the full call
a user makes: normalisation, index build / fit and search. Slow cases may search only the first
``--subset`` queries and are extrapolated linearly to all queries (exact brute force costs the
same per query), which the output says (``measured_queries``).

    python benchmarks/bench_knn.py --gallery 100000 1000000 --queries 10000

Peak RSS includes the interpreter and libraries (``base_rss_mb``, after an untimed warm-up call)
and the gallery and queries (``data_rss_mb``: RSS once they exist); the search's own memory is
``peak_rss_mb - data_rss_mb``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, load_average, machine, median, run_case  # noqa: E402

DIM, K = 512, 20


def vectors(n: int, seed: int):
    """``[n, 512]`` float32 standard normal rows."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)


def search_faiss(gallery, queries, k):
    from backbone_ssl.evaluation.knn import knn_search

    return knn_search(gallery, queries, k)


def search_torch(gallery, queries, k, q_chunk: int = 2048, g_chunk: int = 65536):
    """Chunked ``queries @ gallery.T`` + ``topk``, merging the per-chunk candidates."""
    import torch

    g = torch.nn.functional.normalize(torch.from_numpy(gallery), dim=1)
    q = torch.nn.functional.normalize(torch.from_numpy(queries), dim=1)
    sims_out, idx_out = [], []
    for qs in range(0, q.shape[0], q_chunk):
        qc = q[qs:qs + q_chunk]
        best_s, best_i = None, None
        for gs in range(0, g.shape[0], g_chunk):
            s, i = (qc @ g[gs:gs + g_chunk].T).topk(min(k, g.shape[0] - gs), dim=1)
            i += gs
            if best_s is not None:
                s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, j)
            best_s, best_i = s, i
        sims_out.append(best_s)
        idx_out.append(best_i)
    return torch.cat(sims_out).numpy(), torch.cat(idx_out).numpy()


def search_sklearn(gallery, queries, k):
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="cosine").fit(gallery)
    dist, idx = nn.kneighbors(queries)
    return 1.0 - dist, idx


SEARCH = {"faiss": search_faiss, "torch": search_torch, "sklearn": search_sklearn}


def one_case(method: str, n_gallery: int, n_queries: int, subset: int, repeats: int) -> dict:
    """Time ``repeats`` searches of the first ``subset`` queries; extrapolate to ``n_queries``."""
    import numpy as np
    import torch
    from benchutil import peak_rss_mb

    SEARCH[method](vectors(100, 2), vectors(10, 3), K)  # imports and thread pools: not timed
    base_rss = peak_rss_mb()["peak_rss_mb"]
    gallery, queries = vectors(n_gallery, 0), vectors(n_queries, 1)[:subset]
    data_rss = peak_rss_mb()["peak_rss_mb"]
    times, loads = [], []
    for _ in range(repeats):
        loads.append(load_average())
        start = time.perf_counter()
        sims, idx = SEARCH[method](gallery, queries, K)
        times.append(time.perf_counter() - start)
    # agreement with the exact answer on a few queries (float32: ties may swap neighbours)
    check = np.asarray(idx[:50])
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries[:50] / np.linalg.norm(queries[:50], axis=1, keepdims=True)
    exact = np.argpartition(-(q @ g.T), K, axis=1)[:, :K]
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(check, exact)]))
    t = median(times)
    return {"method": method, "gallery": n_gallery, "queries": n_queries,
            "measured_queries": subset, "repeats": repeats, "threads": torch.get_num_threads(),
            "seconds_measured": round(t, 3), "all_seconds": [round(x, 3) for x in times],
            "seconds_all_queries": round(t * n_queries / subset, 2),
            "queries_per_s": round(subset / t, 1), "recall_at_k_vs_exact": round(recall, 4),
            "base_rss_mb": base_rss, "data_rss_mb": data_rss, "load": loads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--methods", nargs="+", default=list(SEARCH))
    ap.add_argument("--subset", type=str, nargs="*", default=["1000000:sklearn:1000",
                                                                "1000000:faiss:2000",
                                                                "1000000:torch:2000"],
                    help="GALLERY:METHOD:QUERIES cases that search only that many queries")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "GALLERY", "QUERIES", "SUBSET"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        m, g, q, s = a.one
        emit(one_case(m, int(g), int(q), int(s), a.repeats))
        return
    subsets = {(int(g), m): int(n) for g, m, n in (x.split(":") for x in a.subset)}
    out = {"machine": machine(), "settings": vars(a), "cases": []}
    for g in a.gallery:
        for m in a.methods:
            sub = min(subsets.get((g, m), a.queries), a.queries)
            res = run_case([__file__, "--one", m, str(g), str(a.queries), str(sub),
                            "--repeats", str(a.repeats)])
            out["cases"].append(res)
            print(f"{g} {m}: {res['seconds_all_queries']} s for {a.queries} queries "
                  f"(measured {sub}), peak RSS {res['peak_rss_mb']} MB "
                  f"(data {res['data_rss_mb']} MB), load {res['load']}",
                  file=sys.stderr, flush=True)
        base = next((c for c in out["cases"] if c["gallery"] == g and c["method"] == "sklearn"),
                    None)
        for c in out["cases"]:
            if base is not None and c["gallery"] == g:
                c["speedup_vs_sklearn"] = round(base["seconds_all_queries"]
                                                / c["seconds_all_queries"], 2)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["cases"], indent=2))


if __name__ == "__main__":
    main()
