"""Encoders x clustering methods on labelled face folders: each method's parameter chosen on a
val folder (best pairwise F), then scored once on the test folder with that choice.

    python benchmarks/cluster_compare.py --val VAL_DIR --test TEST_DIR --k 5 \\
        --encoders pixels:32 random:resnet10t simclr=RUN/encoder

Prints a markdown table (pairwise F / BCubed F / NMI (clusters), chosen parameter) and writes
``--out`` JSON. Every other setting is the ``configs/cluster.yaml`` default.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from backbone_ssl.cluster.config import ClusterConfig, GraphConfig
from backbone_ssl.cluster.graph import build_knn_graph
from backbone_ssl.cluster.methods import run_method
from backbone_ssl.cluster.scores import cluster_scores
from backbone_ssl.config import load_config
from backbone_ssl.evaluation.features import embed_folder
from backbone_ssl.export import resolve_encoder

#: the one parameter chosen on val per method, and its grid
GRID = {
    "rank_order": ("rank_order_threshold", [0.4, 0.8, 1.2, 1.6, 2.0]),
    "leiden": ("leiden_resolution", [0.5, 1.0, 2.0, 4.0, 8.0]),
    "infomap": ("min_sim", [0.0, 0.3, 0.5, 0.7, 0.9]),
    "hdbscan": ("hdbscan_min_cluster_size", [2, 3, 5, 8]),
    "agglomerative": ("agglomerative_distance", [0.02, 0.05, 0.1, 0.2, 0.4, 0.6]),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--val", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--encoders", nargs="+", required=True,
                   help="ENC or LABEL=ENC (an encoder folder, pixels:S, random:ARCH)")
    p.add_argument("--random-size", type=int, default=64,
                   help="input size of random:ARCH encoders (match the trained encoders')")
    p.add_argument("--out", default="cluster_compare.json")
    args = p.parse_args()
    base = load_config(ClusterConfig, "cluster").methods
    results = {}
    for item in args.encoders:
        spec, sep, path = item.partition("=")  # the row's label, and the encoder
        if not sep:
            spec = path = item
        enc = resolve_encoder(path, input_size=args.random_size if path.startswith("random:")
                              else None)
        data = {}
        for split in ("val", "test"):
            feats, labels, *_ = embed_folder(enc, getattr(args, split))
            data[split] = (feats, labels, build_knn_graph(feats, GraphConfig(k=args.k)))
        results[spec] = {}
        for method, (key, grid) in GRID.items():
            def score(split: str, value, method=method, key=key, data=data):
                feats, labels, graph = data[split]
                lab = run_method(method, feats, graph, replace(base, **{key: value}))
                return cluster_scores(labels, lab)
            val_f = [score("val", v)["pairwise_f"] for v in grid]
            best = grid[int(np.argmax(val_f))]
            results[spec][method] = {"param": key, "chosen": best, "val_pairwise_f": max(val_f),
                                     "test": score("test", best)}
    print("| encoder | " + " | ".join(GRID) + " |")
    print("|---|" + "---|" * len(GRID))
    for spec, row in results.items():
        cells = [f"{r['test']['pairwise_f']:.3f} / {r['test']['bcubed_f']:.3f} / "
                 f"{r['test']['nmi']:.3f} ({r['test']['n_clusters']}; {r['chosen']})"
                 for r in row.values()]
        print(f"| {spec} | " + " | ".join(cells) + " |")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
