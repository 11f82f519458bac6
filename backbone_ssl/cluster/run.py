"""``backbone-ssl cluster``: embed a face folder, build the kNN graph once, run every requested
method on it, score against identities where labels exist, draw the sheets, export clusters.

Outputs under ``--out``: ``clusters.csv`` (``file,cluster,confidence`` of the first method; one
``clusters_<method>.csv`` more per method when several run), ``report.json``,
``sheets/cluster_*.png`` (large clusters), ``sheets/confused_pairs.png``, ``size_histogram.png``.
"""

from __future__ import annotations

import csv
import logging
import os
import resource
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from backbone_ssl.cluster.config import METHODS, ClusterConfig, GraphConfig
from backbone_ssl.cluster.export import export_identities
from backbone_ssl.cluster.graph import KnnGraph, build_knn_graph
from backbone_ssl.cluster.labels import find_ground_truth, golden_face_identities, resolve_faces
from backbone_ssl.cluster.methods import confidence, relabel, run_method
from backbone_ssl.cluster.scores import cluster_scores
from backbone_ssl.cluster.sheets import (
    cluster_sheets,
    confused_pairs,
    confused_sheet,
    size_histogram,
)
from backbone_ssl.config import load_config, to_dict, to_yaml
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.knn import knn_search
from backbone_ssl.evaluation.normalize import l2_normalize
from backbone_ssl.io import atomic_path, write_json_atomic, write_text_atomic
from backbone_ssl.outdir import mark_out_dir, prepare_out_dir

log = logging.getLogger(__name__)

COMMAND = "cluster"


def _load_encoder(spec: str):
    from backbone_ssl.export import resolve_encoder

    try:
        return resolve_encoder(spec)
    except UserError:
        raise
    except Exception as exc:  # a corrupt file, a wrong format: still one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot load encoder {spec}: {first}") from None


def book_groups(paths: Sequence[Path], root: Path) -> np.ndarray:
    """Group id ``[N]`` of each face: its top-level folder under ``root`` (its book)."""
    names = [Path(p).relative_to(root).parts[0] if len(Path(p).relative_to(root).parts) > 1
             else "" for p in paths]
    _, inv = np.unique(np.asarray(names), return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def cluster_by_group(feats: np.ndarray, groups: np.ndarray, method: str, cfg: ClusterConfig,
                     ) -> np.ndarray:
    """``--group-by book``: cluster each group's faces on its own kNN graph (its cast), then link
    casts across groups whose L2-normalised centroids have cosine ``>= cfg.cross_book_sim``
    (each cast to its nearest casts of other books, transitively). Returns labels ``[N]``."""
    x = l2_normalize(feats)
    labels = np.full(len(x), -1, dtype=np.int64)
    offset = 0
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        if len(members) <= 2:
            local = np.arange(len(members))
        else:
            gcfg = GraphConfig(**{**to_dict(cfg.graph), "k": min(cfg.graph.k, len(members) - 1)})
            local = run_method(method, x[members], build_knn_graph(x[members], gcfg),
                               cfg.methods, cfg.seed)
        labels[members] = offset + local
        offset += int(local.max()) + 1
    n_casts = offset
    cents = np.zeros((n_casts, x.shape[1]), dtype=np.float64)
    np.add.at(cents, labels, x)
    cents = l2_normalize(cents)
    cast_group = np.zeros(n_casts, dtype=np.int64)
    cast_group[labels] = groups
    kk = min(n_casts, cfg.graph.k + 1)
    sims, idx = knn_search(cents, cents, kk)
    rows = np.repeat(np.arange(n_casts), idx.shape[1])
    cols, s = idx.reshape(-1), sims.reshape(-1)
    ok = (cols >= 0) & (s >= cfg.cross_book_sim)
    ok &= cast_group[rows] != cast_group[np.maximum(cols, 0)]
    link = coo_matrix((np.ones(int(ok.sum())), (rows[ok], cols[ok])), shape=(n_casts,) * 2)
    _, merged = connected_components(link, directed=False)
    return relabel(merged[labels])


def _write_csv(path: Path, files: list[str], labels: np.ndarray, conf: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "cluster", "confidence"])
        w.writerows(zip(files, labels.tolist(), (f"{c:.4f}" for c in conf.tolist())))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_cluster(encoder: str, data: str | os.PathLike, out: str | os.PathLike,
                method: str | None = None, group_by: str | None = None,
                export_dir: str | os.PathLike | None = None,
                ground_truth: str | os.PathLike | None = None,
                config_file: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The whole command (see the module docstring); returns the report."""
    from backbone_ssl.evaluation.features import embed_dataset, load_image_folder

    if method is not None and method != "all" and method not in METHODS:
        raise UserError(f"unknown --method '{method}' (choose from {', '.join(METHODS)}, all)")
    if group_by not in (None, "book"):
        raise UserError(f"unknown --group-by '{group_by}' (choose from: book)")
    cfg = load_config(ClusterConfig, "cluster", config_file, overrides, method=method)
    out = prepare_out_dir(out, COMMAND, sources=[data, encoder, export_dir], mark=False)
    if export_dir is not None:
        from backbone_ssl.cluster.export import check_export_dir

        check_export_dir(Path(export_dir))
    source = resolve_faces(data)
    if group_by == "book" and not source.folders_are_books:
        raise UserError(f"--group-by book needs a `golden prepare` output (or its faces/), "
                        f"{data} has no prepare.json")
    enc = _load_encoder(encoder)
    t0 = time.perf_counter()
    dataset, skipped = load_image_folder(source.root)
    n = len(dataset)
    if n <= cfg.graph.k:
        raise UserError(f"{n} decodable images in {source.root}: clustering needs more than the "
                        f"neighbour count graph.k={cfg.graph.k} (lower graph.k=... or add images)")
    feats = embed_dataset(enc, dataset, cfg.batch_size, cfg.num_workers)
    embed_s = time.perf_counter() - t0
    paths = [Path(p) for p in dataset.paths]
    files = [str(p.relative_to(source.root)) for p in paths]

    labels_from, truth = "none", None
    if ground_truth is not None or source.folders_are_books:
        gt = Path(ground_truth) if ground_truth is not None else find_ground_truth(source)
        if gt is not None:
            if not gt.is_file():
                raise UserError(f"--ground-truth file not found: {gt}")
            if source.prepare is None:
                raise UserError("--ground-truth needs a `golden prepare` output as --data")
            truth = golden_face_identities(paths, source.root, source.prepare, gt)
            labels_from = f"ground truth {gt}"
    else:
        truth = np.asarray(dataset.labels, dtype=np.int64)
        labels_from = "folders"

    graph: KnnGraph = build_knn_graph(feats, cfg.graph)
    log.info("kNN graph: %d faces, k=%d, %s in %.1fs", n, graph.k, graph.index, graph.seconds)
    mark_out_dir(out, COMMAND)
    results: dict[str, Any] = {}
    first_labels = first_conf = None
    for m in cfg.method_list():
        t1 = time.perf_counter()
        lab = (cluster_by_group(feats, book_groups(paths, source.root), m, cfg)
               if group_by == "book" else run_method(m, feats, graph, cfg.methods, cfg.seed))
        secs = time.perf_counter() - t1
        conf = confidence(graph, lab)
        sizes = np.bincount(lab)
        res: dict[str, Any] = {"seconds": round(secs, 3), "n_clusters": int(len(sizes)),
                               "singletons": int((sizes == 1).sum()),
                               "largest": int(sizes.max())}
        if truth is not None:
            res["scores"] = cluster_scores(truth, lab)
        results[m] = res
        if first_labels is None:
            first_labels, first_conf = lab, conf
            _write_csv(out / "clusters.csv", files, lab, conf)
        if len(cfg.method_list()) > 1:
            _write_csv(out / f"clusters_{m}.csv", files, lab, conf)
    assert first_labels is not None and first_conf is not None
    primary = cfg.method_list()[0]

    sheets = cluster_sheets(out / "sheets", paths, first_labels, first_conf, cfg.large_cluster,
                            cfg.max_sheets, cfg.sheet_faces)
    pairs = confused_pairs(graph, first_labels, cfg.confused_pairs)
    if confused_sheet(out / "sheets" / "confused_pairs.png", paths, first_labels, first_conf,
                      pairs):
        sheets.append("confused_pairs.png")
    size_histogram(out / "size_histogram.png", first_labels,
                   f"{primary} on {enc.name}: {results[primary]['n_clusters']} clusters")
    report: dict[str, Any] = {
        "command": COMMAND,
        "encoder": {"spec": str(encoder), "arch": enc.arch, "input_size": enc.input_size,
                    **{k: v for k, v in enc.meta.items() if isinstance(v, (str, int, float))}},
        "data": str(source.root), "n_faces": n, "skipped_images": int(skipped),
        "labels": labels_from, "group_by": group_by, "method": primary,
        "graph": {"k": graph.k, "index": graph.index, "recall": graph.recall,
                  "seconds": round(graph.seconds, 3)},
        "embed_seconds": round(embed_s, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
        "methods": results,
        "sheets": [f"sheets/{s}" for s in sheets], "histogram": "size_histogram.png",
        "confused_pairs": [{"a": a, "b": b, "similarity": round(w, 4)} for a, b, w in pairs],
    }
    if "scores" in results[primary]:
        report.update({k: results[primary]["scores"][k] for k in ("pairwise_f", "bcubed_f", "nmi")
                       if k in results[primary]["scores"]})
    if export_dir is not None:
        report["export"] = {"dir": str(export_dir), **export_identities(
            export_dir, paths, first_labels, first_conf, source.root)}
    write_text_atomic(out / "config.yaml", to_yaml(cfg))
    write_json_atomic(out / "report.json", report)
    return report


def format_summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal: one per method."""
    lines = [f"cluster: {report['n_faces']} faces ({report['skipped_images']} skipped), "
             f"kNN k={report['graph']['k']} {report['graph']['index']}, labels: "
             f"{report['labels']}"]
    for m, r in report["methods"].items():
        s = r.get("scores", {})
        score = (f"  pairwise F {s['pairwise_f']:.3f}  BCubed F {s['bcubed_f']:.3f}  "
                 f"NMI {s['nmi']:.3f}  ({s['n_identities']} identities)"
                 if "pairwise_f" in s else "")
        lines.append(f"  {m:13s} {r['n_clusters']:6d} clusters in {r['seconds']:.2f}s{score}")
    return "\n".join(lines)
