"""Method comparison on the embedded toy data: ``python -m backbone_ssl.compare``.

Pretrains every method (DINO, BYOL, inpainting, person / no-person) with the same architecture,
batch size, input size and number of steps, evaluates each exported encoder on the toy-face
identities (``split/train`` as gallery / probe training set, ``split/test`` as queries: kNN top-1
and linear-probe top-1) beside a random-init encoder of the same architecture, and writes
``OUT/compare.md`` (the table) and ``OUT/compare.json``.

Data: DINO, BYOL and inpainting pretrain on the toy faces' ``split/train`` images (labels unused);
person pretrains on toy comics prepared by ``golden prepare`` (its own labels: person / no person),
so its row measures transfer from panels to faces. Each method's own held-out metric is reported
beside it (inpainting: hole PSNR vs the mean-colour fill; person: ROC-AUC on held-out books).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from backbone_ssl.errors import UserError
from backbone_ssl.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

METHOD_ORDER = ("dino", "byol", "inpaint", "person")


def prepare_data(out: Path, identities: int, per_identity: int, books: int, pages: int,
                 seed: int) -> tuple[Path, Path]:
    """Write (or reuse) toy faces and prepared toy comics under ``out``; returns
    ``(toy faces root, golden prepare output)``."""
    from backbone_ssl.data.golden import prepare
    from backbone_ssl.data.toy import write_toy_faces
    from backbone_ssl.data.toy_comics import write_toy_comics

    faces = out / "toy_faces"
    if not (faces / "toy_faces.json").is_file():
        write_toy_faces(faces, identities=identities, per_identity=per_identity, size=64,
                        seed=seed)
    comics, prep = out / "toy_comics", out / "toy_comics_prep"
    if not (comics / "toy_comics.json").is_file():
        write_toy_comics(comics, books=books, pages=pages, seed=seed)
    if not (prep / "stats.json").is_file():
        prepare(comics / "raw_panel_images", comics / "face_annotations", prep)
    return faces, prep


def last_values(metrics_csv: Path, keys: Sequence[str]) -> dict[str, float]:
    """The last logged value of each of ``keys`` in a run's ``metrics.csv``."""
    found: dict[str, float] = {}
    if not metrics_csv.is_file():
        return found
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            for k in keys:
                if row.get(k):
                    found[k] = float(row[k])
    return found


def own_metric(method: str, run_dir: Path) -> str:
    """The method's own held-out result, as a short text (or ``–``)."""
    vals = last_values(run_dir / "metrics.csv", ("val/hole_psnr", "val/meanfill_hole_psnr",
                                                  "val/roc_auc", "val/acc"))
    if method == "inpaint" and "val/hole_psnr" in vals:
        return (f"hole PSNR {vals['val/hole_psnr']:.2f} dB "
                f"(mean-colour fill {vals['val/meanfill_hole_psnr']:.2f} dB)")
    if method == "person" and "val/roc_auc" in vals:
        return f"ROC-AUC {vals['val/roc_auc']:.3f}, acc {vals['val/acc']:.3f} (held-out books)"
    return "–"


def pretrain_one(method: str, data: Path, run_dir: Path, common: Sequence[str]) -> dict[str, Any]:
    """Pretrain ``method`` from scratch into ``run_dir``; returns steps, seconds, encoder dir."""
    from backbone_ssl.train import pretrain

    if run_dir.exists():  # the comparison is reproducible: every run starts afresh
        shutil.rmtree(run_dir)
    res = pretrain(method, data=str(data), out=str(run_dir), overrides=list(common))
    return {"steps": res.steps, "seconds": res.seconds, "encoder": str(res.encoder_dir)}


def format_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, n: dict[str, int]
                    ) -> str:
    """The comparison table (accuracies in %) and how it was made."""
    lines = [
        f"Toy-face identities ({n['num_classes']} identities, {n['n_train']} gallery / "
        f"{n['n_test']} query images), {args.arch} at {args.image_size} px, "
        f"{args.steps} steps of batch {args.batch_size} per method, seed {args.seed}.",
        "",
        "| method | pretrained on | steps | pretrain time (s) | kNN top-1 (%) | "
        "linear top-1 (%) | method's own held-out metric |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['data']} | {r['steps']} | {r['seconds']:.0f} | "
            f"{100 * r['knn_top1']:.1f} | {100 * r['linear_top1']:.1f} | {r['own']} |"
        )
    return "\n".join(lines) + "\n"


def run_compare(args: argparse.Namespace) -> str:
    """Everything: data, four pretraining runs, five evaluations, the table. Returns markdown."""
    from backbone_ssl.evaluation.report import run_eval
    from backbone_ssl.export import resolve_encoder

    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_ORDER]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)} "
                        f"(choose from {', '.join(METHOD_ORDER)})")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    faces, prep = prepare_data(out / "data", args.identities, args.per_identity, args.books,
                               args.pages, args.seed)
    train_dir, test_dir = faces / "split" / "train", faces / "split" / "test"
    common = [f"model.arch={args.arch}", f"trainer.max_steps={args.steps}",
              "trainer.max_epochs=-1", f"data.batch_size={args.batch_size}",
              f"data.image_size={args.image_size}", f"data.num_workers={args.num_workers}",
              f"seed={args.seed}", "trainer.enable_progress_bar=false",
              f"trainer.checkpoint_every_n_steps={max(args.steps, 1)}"]
    rows: list[dict[str, Any]] = []
    n: dict[str, int] = {}
    for method in methods:
        data = prep if method == "person" else train_dir
        log.info("compare: pretraining %s on %s", method, data)
        run = pretrain_one(method, data, out / "runs" / method, common)
        encoder = resolve_encoder(run["encoder"])
        report = run_eval(encoder, train_dir, test_dir, out / "eval" / method, k=args.k,
                          seed=args.seed)
        n = {k: report[k] for k in ("n_train", "n_test", "num_classes")}
        rows.append({"method": method, "data": "toy comics panels" if method == "person"
                     else "toy faces (split/train)", **run,
                     "knn_top1": report["knn"]["top1"], "linear_top1": report["linear"]["top1"],
                     "own": own_metric(method, out / "runs" / method)})
    baseline = resolve_encoder(f"random:{args.arch}", input_size=args.image_size, seed=args.seed)
    report = run_eval(baseline, train_dir, test_dir, out / "eval" / "random", k=args.k,
                      seed=args.seed)
    n = {k: report[k] for k in ("n_train", "n_test", "num_classes")}
    rows.append({"method": "random init", "data": "–", "steps": 0, "seconds": 0.0,
                 "encoder": f"random:{args.arch}", "knn_top1": report["knn"]["top1"],
                 "linear_top1": report["linear"]["top1"], "own": "–"})
    text = format_markdown(rows, args, n)
    write_text_atomic(out / "compare.md", text)
    write_json_atomic(out / "compare.json", {"args": vars(args), "counts": n, "rows": rows})
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backbone_ssl.compare",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="compare_out")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per method")
    p.add_argument("--arch", default="resnet18", help="the shared timm architecture")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHOD_ORDER))
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--per-identity", type=int, default=40)
    p.add_argument("--books", type=int, default=30, help="toy comic books (person)")
    p.add_argument("--pages", type=int, default=4)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        text = run_compare(args)
    except UserError as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    print(text)
    print(f"({time.perf_counter() - t0:.0f}s; {Path(args.out) / 'compare.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
