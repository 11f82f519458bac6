"""Cosine kNN at scale: our faiss paths vs torch matmul + top-k vs scikit-learn brute force.

Float32 vectors (d=512, seeded), ``--queries`` queries (10k) against 100k and 1M gallery vectors,
k=20. ``--data random``: standard normal rows (no structure: the worst case for an approximate
index); ``--data clustered``: rows around ``--classes`` identity centres plus noise (features of a
trained encoder look like this), labelled, so each case also reports kNN top-1. Methods: ``faiss``
(``knn_search``, exact, the default of ``eval``: bfloat16-screened where the CPU has native
bfloat16, see evaluation/screened.py), ``faiss-f32`` (faiss ``IndexFlatIP`` alone, float32),
``faiss-ivf`` (``knn_search(index="ivf")``,
approximate, ``eval --knn-index ivf``), ``torch``, ``sklearn`` (both exact).

Each case runs in its own subprocess (peak RSS per case); times are the full call a user makes:
normalisation, index build (IVF: k-means training and adding) / fit, and search. Slow exact cases
may search only the first ``--subset`` queries and are extrapolated linearly to all queries
(exact brute force costs the same per query), which the output says (``measured_queries``); IVF
is always timed on all queries (its build cost does not grow with them). Recall@k is measured
against an exact numpy search of the first 200 queries.

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
#: clustered data: per-dimension noise around unit-variance centres (well-separated identities:
#: exact kNN top-1 about 1.0; IVF recall falls as this grows, see benchmarks/RESULTS.md)
NOISE = 1.15


def vectors(n: int, seed: int, data: str = "random", classes: int = 10000):
    """``([n, 512] float32 rows, [n] int labels)``: standard normal rows (labels 0), or rows
    around ``classes`` centres drawn from a fixed seed (gallery and queries share them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if data == "random":
        return rng.standard_normal((n, DIM), dtype=np.float32), np.zeros(n, dtype=np.int64)
    centres = np.random.default_rng(12345).standard_normal((classes, DIM), dtype=np.float32)
    labels = rng.integers(0, classes, n)
    rows = rng.standard_normal((n, DIM), dtype=np.float32)
    rows *= NOISE
    for start in range(0, n, 65536):  # in place: no second [n, 512] copy
        rows[start:start + 65536] += centres[labels[start:start + 65536]]
    return rows, labels


def search_faiss(gallery, queries, k):
    from backbone_ssl.evaluation.knn import knn_search

    return knn_search(gallery, queries, k)


def search_faiss_f32(gallery, queries, k):
    """faiss ``IndexFlatIP`` in float32, without the bfloat16 screen (the path before it)."""
    from backbone_ssl.evaluation.knn import build_index, l2_normalize

    return build_index(gallery, "flat").search(l2_normalize(queries), k)


NPROBE: int | None = None  # --nprobe (None: knn_search's default)


def search_faiss_ivf(gallery, queries, k):
    from backbone_ssl.evaluation.knn import knn_search

    return knn_search(gallery, queries, k, index="ivf", nprobe=NPROBE)


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


SEARCH = {"faiss": search_faiss, "faiss-f32": search_faiss_f32, "faiss-ivf": search_faiss_ivf,
          "torch": search_torch, "sklearn": search_sklearn}


def one_case(method: str, n_gallery: int, n_queries: int, subset: int, repeats: int,
             data: str = "random", classes: int = 10000) -> dict:
    """Time ``repeats`` searches of the first ``subset`` queries; extrapolate to ``n_queries``."""
    import logging

    import numpy as np
    import torch
    from benchutil import peak_rss_mb

    from backbone_ssl.evaluation.knn import knn_scores

    notes: list[str] = []  # the screened search logs how many queries it re-searched

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            notes.append(record.getMessage())

    screen_log = logging.getLogger("backbone_ssl.evaluation.screened")
    screen_log.setLevel(logging.INFO)
    screen_log.addHandler(Keep())

    SEARCH[method](vectors(2000, 2)[0], vectors(10, 3)[0], K)  # imports, thread pools: not timed
    base_rss = peak_rss_mb()["peak_rss_mb"]
    gallery, g_labels = vectors(n_gallery, 0, data, classes)
    queries, q_labels = vectors(n_queries, 1, data, classes)
    queries, q_labels = queries[:subset], q_labels[:subset]
    data_rss = peak_rss_mb()["peak_rss_mb"]
    times, loads = [], []
    for _ in range(repeats):
        loads.append(load_average())
        start = time.perf_counter()
        sims, idx = SEARCH[method](gallery, queries, K)
        times.append(time.perf_counter() - start)
    # agreement with the exact answer on a few queries (float32: ties may swap neighbours)
    check = np.asarray(idx[:RECALL_QUERIES])
    recall = float(np.mean([len(set(a) & set(b)) / K
                            for a, b in zip(check, exact_neighbours(gallery, queries))]))
    top1 = None
    if data == "clustered":
        top1 = knn_scores(np.asarray(sims), np.asarray(idx), g_labels, q_labels, K, 0.07,
                          classes)["top1"]
    t = median(times)
    return {"method": method, "gallery": n_gallery, "queries": n_queries,
            "measured_queries": subset, "repeats": repeats, "threads": torch.get_num_threads(),
            "seconds_measured": round(t, 3), "all_seconds": [round(x, 3) for x in times],
            "seconds_all_queries": round(t * n_queries / subset, 2),
            "queries_per_s": round(subset / t, 1), "recall_at_k_vs_exact": round(recall, 4),
            "recall_queries": min(RECALL_QUERIES, subset), "data": data, "knn_top1": top1,
            "notes": notes[-1:], "nprobe": NPROBE if method == "faiss-ivf" else None,
            "base_rss_mb": base_rss, "data_rss_mb": data_rss, "load": loads}


RECALL_QUERIES = 200


def exact_neighbours(gallery, queries):
    """Exact top-``K`` gallery rows of the first ``RECALL_QUERIES`` queries (numpy, chunked)."""
    import numpy as np

    q = queries[:RECALL_QUERIES] / np.linalg.norm(queries[:RECALL_QUERIES], axis=1, keepdims=True)
    best_s = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    for start in range(0, len(gallery), 65536):
        g = gallery[start:start + 65536]
        s = q @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        s = np.concatenate([best_s, s], 1)
        i = np.concatenate([best_i, np.arange(start, start + len(g))[None].repeat(len(q), 0)], 1)
        top = np.argpartition(-s, min(K, s.shape[1] - 1), axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--methods", nargs="+", default=list(SEARCH))
    ap.add_argument("--subset", type=str, nargs="*", default=["1000000:sklearn:1000",
                                                                "1000000:faiss-f32:2000",
                                                                "1000000:torch:2000"],
                    help="GALLERY:METHOD:QUERIES cases that search only that many queries")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", choices=["random", "clustered"], default="random")
    ap.add_argument("--classes", type=int, default=10000, help="clustered: identities")
    ap.add_argument("--nprobe", type=int, default=None, help="faiss-ivf: cells scanned")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--one", nargs=4, metavar=("METHOD", "GALLERY", "QUERIES", "SUBSET"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    global NPROBE
    NPROBE = a.nprobe
    if a.one:
        m, g, q, s = a.one
        emit(one_case(m, int(g), int(q), int(s), a.repeats, a.data, a.classes))
        return
    subsets = {(int(g), m): int(n) for g, m, n in (x.split(":") for x in a.subset)}
    out = {"machine": machine(), "settings": vars(a), "cases": []}
    for g in a.gallery:
        for m in a.methods:
            sub = min(subsets.get((g, m), a.queries), a.queries)
            res = run_case([__file__, "--one", m, str(g), str(a.queries), str(sub),
                            "--repeats", str(a.repeats), "--data", a.data,
                            "--classes", str(a.classes),
                            *(["--nprobe", str(a.nprobe)] if a.nprobe else [])])
            out["cases"].append(res)
            print(f"{g} {m}: {res['seconds_all_queries']} s for {a.queries} queries "
                  f"(measured {sub}), peak RSS {res['peak_rss_mb']} MB "
                  f"(data {res['data_rss_mb']} MB), recall@{K} {res['recall_at_k_vs_exact']}, "
                  f"kNN top-1 {res['knn_top1']}, load {res['load']}",
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
