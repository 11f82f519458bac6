"""Method comparison on the embedded toy data: ``python -m backbone_ssl.compare``.

Pretrains every registered method (``backbone_ssl.methods.METHODS``: DINO, BYOL, inpainting,
person / no-person, and whatever else is registered) with the same architecture, batch size,
input size and number of steps (or, with ``--minutes M``, the same wall-clock budget), records
each run's budget (steps, images seen, wall time, FLOPs of one training step), evaluates each
exported encoder on the toy-face identities (``split/train`` as gallery / probe training set,
``split/test`` as queries: kNN top-1 and linear-probe top-1; the online monitor uses
``split/val``) beside a random-init encoder of the same architecture and raw pixels, also kNN on
golden faces by character (:mod:`backbone_ssl.data.faces_by_character`), and writes
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

import pytorch_lightning as pl
from torch.utils.flop_counter import FlopCounterMode

from backbone_ssl.errors import UserError
from backbone_ssl.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

#: Methods shown first, in this order; every other method in the registry follows.
METHOD_ORDER = ("dino", "byol", "inpaint", "person", "identity")


def registered_methods() -> list[str]:
    """Every method of :data:`backbone_ssl.methods.METHODS`, :data:`METHOD_ORDER` first."""
    from backbone_ssl.methods import METHODS

    return [m for m in METHOD_ORDER if m in METHODS] + sorted(set(METHODS) - set(METHOD_ORDER))


class _GlobalScope:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP counts toward ``Global``.

    torch's ``ModuleTracker`` registers autograd hooks on every module's inputs and outputs; a
    module called under ``torch.no_grad()`` on a view of a parameter (pytorch-metric-learning's
    ``ArcFaceLoss.get_logits`` in ``identity``'s accuracy) has ``requires_grad`` set and no
    gradient function, and the tracker raises "Expected gradient function to be set". The budget
    needs only the total, so no per-module attribution (and no hooks) at all.
    """

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalScope:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class TotalFlopCounter(FlopCounterMode):
    """``torch.utils.flop_counter.FlopCounterMode`` counting the total only (no module tracker,
    :class:`_GlobalScope`); read it with :meth:`get_total_flops`. Safe around any code a training
    step runs: ``no_grad`` blocks, EMA updates, manual optimisation, several backward passes."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalScope()


class Budget(pl.Callback):
    """Measures a run's budget: FLOPs of its first training step (forward, backward and optimiser
    of the real step, every network the method runs, per process; :class:`TotalFlopCounter`) and,
    with ``minutes``, stops training once that much wall-clock time has passed since the first
    step (the same budget for every method)."""

    def __init__(self, minutes: float | None = None) -> None:
        self.minutes = minutes
        self.flops_per_step: int | None = None
        self._counter: TotalFlopCounter | None = None
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = time.perf_counter()
        if self.flops_per_step is None and self._counter is None:
            self._counter = TotalFlopCounter()
            self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._counter is not None:
            self.flops_per_step = int(self._counter.get_total_flops())
            self._close()
        if self.minutes is not None and time.perf_counter() - self._start >= 60 * self.minutes:
            trainer.should_stop = True

    def _close(self) -> None:
        """Leave the counting mode (it is process-global: it must never outlive the step)."""
        counter, self._counter = self._counter, None
        if counter is not None:
            counter.__exit__(None, None, None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close()  # a step that raised (e.g. a non-finite loss) leaves no mode behind

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._close()


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


def pretrain_one(method: str, data: Path, run_dir: Path, common: Sequence[str],
                 minutes: float | None = None) -> dict[str, Any]:
    """Pretrain ``method`` from scratch into ``run_dir``; returns steps, images seen, seconds,
    FLOPs per step and the encoder dir."""
    from backbone_ssl.train import pretrain

    if run_dir.exists():  # the comparison is reproducible: every run starts afresh
        shutil.rmtree(run_dir)
    budget = Budget(minutes)
    res = pretrain(method, data=str(data), out=str(run_dir), overrides=list(common),
                   callbacks=[budget])
    return {"steps": res.steps, "images": round(res.images_per_second * res.seconds),
            "seconds": res.seconds, "flops_per_step": budget.flops_per_step,
            "encoder": str(res.encoder_dir)}


def format_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, n: dict[str, int]
                    ) -> str:
    """The comparison table (accuracies in %) and how it was made."""
    budget = (f"the same wall-clock budget of {args.minutes:g} min per method (at most "
              f"{args.steps} steps)" if args.minutes else f"{args.steps} steps per method")
    lines = [
        f"Budget: {budget}, batch {args.batch_size}, {args.arch} at {args.image_size} px, "
        f"seed {args.seed} (one seed: a difference needs 3 seeds, docs/EVALUATION.md). "
        f"Toy-face identities: {n['num_classes']} identities, {n['n_train']} gallery "
        f"(split/train) / {n['n_test']} query (split/test) images; the online monitor used "
        "split/val. Golden faces by character: kNN top-1 on its test split (gallery: its train).",
        "",
        "| method | pretrained on | steps | images seen | pretrain time (s) | GFLOPs / step | "
        "kNN top-1 (%) | linear top-1 (%) | faces by character kNN top-1 (%) | "
        "method's own held-out metric |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gf = f"{r['flops_per_step'] / 1e9:.1f}" if r.get("flops_per_step") else "–"
        chars = f"{100 * r['chars_top1']:.1f}" if r.get("chars_top1") is not None else "–"
        lines.append(
            f"| {r['method']} | {r['data']} | {r['steps']} | {r.get('images', 0)} | "
            f"{r['seconds']:.0f} | {gf} | {100 * r['knn_top1']:.1f} | "
            f"{100 * r['linear_top1']:.1f} | {chars} | {r['own']} |"
        )
    return "\n".join(lines) + "\n"


def run_compare(args: argparse.Namespace) -> str:
    """Everything: data, one pretraining run per method, the evaluations beside random init and
    raw pixels, the table. Returns markdown."""
    from backbone_ssl.export import resolve_encoder

    out = Path(args.out)
    known = registered_methods()
    methods = [m.strip() for m in (args.methods or ",".join(known)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)} "
                        f"(choose from {', '.join(known)})")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    faces, prep = prepare_data(out / "data", args.identities, args.per_identity, args.books,
                               args.pages, args.seed)
    train_dir, test_dir = faces / "split" / "train", faces / "split" / "test"
    val_dir = faces / "split" / "val"
    chars = prep / "faces_by_character"
    common = [f"data.val_train={train_dir}", f"data.val_test={val_dir}",
              f"model.arch={args.arch}", f"trainer.max_steps={args.steps}",
              "trainer.max_epochs=-1", f"data.batch_size={args.batch_size}",
              f"data.image_size={args.image_size}", f"data.num_workers={args.num_workers}",
              f"seed={args.seed}", "trainer.enable_progress_bar=false",
              f"trainer.checkpoint_every_n_steps={max(args.steps, 1)}"]
    rows: list[dict[str, Any]] = []
    n: dict[str, int] = {}
    for method in methods:
        data = prep if method == "person" else train_dir
        log.info("compare: pretraining %s on %s", method, data)
        run = pretrain_one(method, data, out / "runs" / method, common, args.minutes)
        encoder = resolve_encoder(run["encoder"])
        rows.append({"method": method, "data": "toy comics panels" if method == "person"
                     else "toy faces (split/train)", **run,
                     **evaluate_row(encoder, train_dir, test_dir, chars, out / "eval" / method,
                                    args),
                     "own": own_metric(method, out / "runs" / method)})
    from backbone_ssl.evaluation.pixels import pixel_encoder

    for name, enc in (("random init", resolve_encoder(f"random:{args.arch}",
                                                      input_size=args.image_size,
                                                      seed=args.seed)),
                      (f"raw pixels {args.image_size} px", pixel_encoder(args.image_size))):
        rows.append({"method": name, "data": "–", "steps": 0, "images": 0, "seconds": 0.0,
                     "flops_per_step": None, "encoder": enc.arch,
                     **evaluate_row(enc, train_dir, test_dir, chars,
                                    out / "eval" / enc.arch.replace(":", "_"), args),
                     "own": "–"})
    n = rows[-1].pop("counts")
    for r in rows:
        r.pop("counts", None)
    text = format_markdown(rows, args, n)
    write_text_atomic(out / "compare.md", text)
    write_json_atomic(out / "compare.json", {"args": vars(args), "counts": n, "rows": rows})
    return text


def evaluate_row(encoder, train_dir: Path, test_dir: Path, chars: Path, out: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """kNN / linear on toy faces split/test and kNN on faces-by-character test for one encoder."""
    from backbone_ssl.evaluation.protocol import evaluate_encoder
    from backbone_ssl.evaluation.report import run_eval

    report = run_eval(encoder, train_dir, test_dir, out, k=args.k, seed=args.seed)
    row = {"knn_top1": report["knn"]["top1"], "linear_top1": report["linear"]["top1"],
           "chars_top1": None,
           "counts": {k: report[k] for k in ("n_train", "n_test", "num_classes")}}
    if (chars / "train").is_dir():
        row["chars_top1"] = evaluate_encoder(encoder, chars / "train", chars / "test", k=args.k,
                                             seed=args.seed)["knn"]["top1"]
    return row


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backbone_ssl.compare",
                                description=__doc__.splitlines()[0])
    p.add_argument("--out", default="compare_out")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per method")
    p.add_argument("--arch", default="resnet18", help="the shared timm architecture")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--methods", default=None,
                   help="comma-separated; default: every registered method")
    p.add_argument("--minutes", type=float, default=None,
                   help="the same wall-clock budget per method (training stops after M minutes "
                        "or --steps, whichever comes first)")
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
