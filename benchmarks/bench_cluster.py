"""Face clustering at scale: the kNN graph and each clustering method on synthetic embeddings.

Synthetic "faces": ``N`` float32 vectors (``--dim``, default 128) around ``N / --per-identity``
identity centres (random unit vectors) plus gaussian noise (``--noise`` per dimension, scaled so
the noise norm is ``--noise``x the centre norm), seeded. Identity sizes vary (Zipf-like: a few
characters appear often, most rarely), as in comics. Each case is a fresh subprocess (peak RSS per
case, :mod:`benchutil`):

- ``graph``: ``build_knn_graph`` (the one ``cluster`` builds once), exact (``flat``) and
  approximate (``ivf``, ``hnsw``), with recall@k measured on 1000 faces; the exact graph is
  saved for the method cases;
- ``<method>``: one clustering method on the saved exact graph (data regenerated from the seed),
  timed alone, scored against the identities (pairwise F, BCubed F).

    python benchmarks/bench_cluster.py --sizes 10000 100000 --out /tmp/bench_cluster
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, machine, run_case  # noqa: E402

METHODS = ("rank_order", "leiden", "infomap", "hdbscan", "agglomerative")


def synthetic(n: int, dim: int, per_identity: int, noise: float, seed: int = 0):
    """``(x [n, dim] float32, labels [n])``: Zipf-sized identities around unit centres."""
    rng = np.random.default_rng(seed)
    n_id = max(2, n // per_identity)
    weights = 1.0 / np.arange(1, n_id + 1) ** 0.5
    labels = rng.choice(n_id, size=n, p=weights / weights.sum())
    centres = rng.normal(size=(n_id, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + rng.normal(scale=noise / np.sqrt(dim), size=(n, dim)).astype(np.float32)
    return x.astype(np.float32), labels


def case(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from backbone_ssl.cluster.config import GraphConfig, MethodsConfig
    from backbone_ssl.cluster.graph import KnnGraph, build_knn_graph
    from backbone_ssl.cluster.methods import run_method
    from backbone_ssl.cluster.scores import cluster_scores

    x, y = synthetic(args.n, args.dim, args.per_identity, args.noise)
    save = Path(args.out) / f"graph_{args.n}.npz"
    if args.case.startswith("graph"):
        kind = args.case.split(":", 1)[1]
        t0 = time.perf_counter()
        g = build_knn_graph(x, GraphConfig(k=args.k, index=kind, recall_sample=1000))
        secs = time.perf_counter() - t0
        if kind == "flat":
            np.savez(save, idx=g.idx, sims=g.sims)
        emit({"case": args.case, "n": args.n, "seconds": round(secs, 2), "recall": g.recall})
        return
    z = np.load(save)
    g = KnnGraph(idx=z["idx"], sims=z["sims"], index="flat", recall=None, seconds=0.0)
    cfg = MethodsConfig(rank_order_threshold=args.rank_order_threshold)
    t0 = time.perf_counter()
    labels = run_method(args.case, x, g, cfg)
    secs = time.perf_counter() - t0
    s = cluster_scores(y, labels)
    emit({"case": args.case, "n": args.n, "seconds": round(secs, 2),
          "n_clusters": s["n_clusters"], "n_identities": s["n_identities"],
          "pairwise_f": round(s["pairwise_f"], 4), "bcubed_f": round(s["bcubed_f"], 4)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--per-identity", type=int, default=20)
    p.add_argument("--noise", type=float, default=0.8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rank-order-threshold", type=float, default=1.6)
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--graphs", nargs="+", default=["flat", "ivf", "hnsw"])
    p.add_argument("--out", default="/tmp/bench_cluster")
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        case(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items()
                                              if k not in ("case", "n")}, "cases": []}
    common = ["--dim", str(args.dim), "--k", str(args.k), "--per-identity",
              str(args.per_identity), "--noise", str(args.noise), "--threads", str(args.threads),
              "--rank-order-threshold", str(args.rank_order_threshold), "--out", args.out]
    graphs = ["flat"] + [g for g in args.graphs if g != "flat"]
    for n in args.sizes:
        for name in [f"graph:{g}" for g in graphs] + list(args.methods):
            res = run_case([__file__, "--case", name, "--n", str(n), *common])
            results["cases"].append(res)
            print(json.dumps(res), flush=True)
            (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
