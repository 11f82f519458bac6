"""Method comparison on the embedded toy data: ``python -m backbone_ssl.compare``.

Pretrains every registered method (``backbone_ssl.methods.METHODS``: DINO, BYOL, inpainting,
person / no-person, and whatever else is registered) with the same architecture, batch size,
input size and number of steps (or, with ``--minutes M``, the same wall-clock budget), records
each run's budget (steps, images seen, wall time, FLOPs of one training step), evaluates each
exported encoder on the toy-face identities (``split/train`` as gallery / probe training set,
``split/test`` as queries: kNN top-1 and linear-probe top-1; the online monitor uses
``split/val``) beside a random-init encoder of the same architecture and raw pixels, also kNN on
golden faces by character (:mod:`backbone_ssl.data.faces_by_character`), and writes
``OUT/compare.md`` (the table) and ``OUT/compare.json``. ``--seeds 0 1 2`` repeats every run
(and random init) per training seed on the same data and tables mean ± std; each finished seed is
kept in ``OUT/compare_seedS.json``.

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


class StepTimer(pl.Callback):
    """Seconds per optimiser step of a short run, after its first ``skip`` steps (data-loader
    start-up, lazy initialisation and the FLOP count stay out of the rate)."""

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    @property
    def seconds_per_step(self) -> float:
        """Mean seconds per step after ``skip`` (the mean, not the median: the stall at each
        epoch boundary, where the loader's workers start again, is part of the cost, so a probe
        should cross one); needs ``skip + 2`` steps."""
        ends = self.ends[self.skip:]
        if len(ends) < 2:
            raise ValueError(f"StepTimer: {len(self.ends)} steps timed, need {self.skip + 2}")
        return (ends[-1] - ends[0]) / (len(ends) - 1)


def replace_run_dir(run_dir: Path) -> None:
    """Remove ``run_dir`` when an earlier ``pretrain`` wrote it (its marker says so), so that every
    comparison run starts afresh; anything else there is refused, never deleted."""
    from backbone_ssl.outdir import output_command

    if not run_dir.exists():
        return
    if output_command(run_dir) != "pretrain":
        raise UserError(f"{run_dir} exists and is not a backbone-ssl pretrain run; move it away "
                        "or choose another --out")
    shutil.rmtree(run_dir)


def steps_for_minutes(method: str, data: Path, run_dir: Path, common: Sequence[str],
                      minutes: float, probe_steps: int = 40,
                      config_file: str | None = None) -> tuple[int, float]:
    """The number of optimiser steps ``method`` runs in ``minutes``, from a timed probe of
    ``probe_steps`` steps (same data, architecture, batch and overrides, written to
    ``RUN_DIR.probe`` and removed after; 40 steps cross at least two epoch boundaries of the toy
    data's 1,000 images at batch 64). Returns ``(steps, seconds per step)``.

    The learning-rate and momentum schedules of the real run are then sized for these steps, so
    every method goes through its whole warm-up and decay within the same wall-clock budget (a
    schedule sized for a large ``--steps`` would keep every method in warm-up).
    """
    from backbone_ssl.train import pretrain

    probe = run_dir.with_name(run_dir.name + ".probe")
    replace_run_dir(probe)
    timer = StepTimer()
    pretrain(method, config_file=config_file, data=str(data), out=str(probe),
             overrides=[*common, f"trainer.max_steps={probe_steps}",
                        f"trainer.checkpoint_every_n_steps={probe_steps}"], callbacks=[timer])
    replace_run_dir(probe)
    per_step = timer.seconds_per_step
    return max(1, int(60 * minutes / per_step)), per_step


def pretrain_one(method: str, data: Path, run_dir: Path, common: Sequence[str],
                 minutes: float | None = None, config_file: str | None = None,
                 max_steps: int | None = None) -> dict[str, Any]:
    """Pretrain ``method`` from scratch into ``run_dir``; returns steps, images seen, seconds,
    FLOPs per step and the encoder dir.

    With ``minutes``, the run's step count (and so its schedules) comes from
    :func:`steps_for_minutes`, at most ``max_steps``, and :class:`Budget` still stops it once
    ``minutes`` have passed (a probe that ran faster than the real run)."""
    from backbone_ssl.train import pretrain

    planned, per_step = None, None
    overrides = list(common)
    if minutes is not None:
        planned, per_step = steps_for_minutes(method, data, run_dir, common, minutes,
                                              config_file=config_file)
        if max_steps is not None:
            planned = min(planned, max_steps)
        overrides += [f"trainer.max_steps={planned}",
                      f"trainer.checkpoint_every_n_steps={planned}"]
    replace_run_dir(run_dir)  # the comparison is reproducible: every run starts afresh
    budget = Budget(minutes)
    res = pretrain(method, config_file=config_file, data=str(data), out=str(run_dir),
                   overrides=overrides, callbacks=[budget])
    return {"steps": res.steps, "planned_steps": planned,
            "probe_seconds_per_step": None if per_step is None else round(per_step, 4),
            "images": round(res.images_per_second * res.seconds),
            "seconds": res.seconds, "flops_per_step": budget.flops_per_step,
            "encoder": str(res.encoder_dir)}


def recipe_file(method: str, recipes: str) -> str | None:
    """The config file a comparison run of ``method`` uses: ``None`` (the method's defaults,
    ``configs/<method>.yaml``) for ``recipes="default"``; for ``recipes="cpu"``,
    ``configs/<method>_cpu.yaml`` where the recipe study wrote one (benchmarks/RECIPES.md), else
    the defaults."""
    from backbone_ssl.config import CONFIG_DIR

    if recipes == "cpu" and (CONFIG_DIR / f"{method}_cpu.yaml").is_file():
        return str(CONFIG_DIR / f"{method}_cpu.yaml")
    return None


def steps_cell(row: dict[str, Any]) -> str:
    """Steps run, and the probe's plan when the wall-clock cap stopped the run before it."""
    planned, steps = row.get("planned_steps"), round(row["steps"])
    if planned and planned != steps:
        return f"{steps} (of {planned} planned)"
    return str(steps)


def train_seeds(args: argparse.Namespace) -> list[int]:
    """The training seeds of a comparison: ``--seeds`` when given, else ``[--seed]``."""
    return list(args.seeds) if args.seeds else [args.seed]


def seeds_phrase(args: argparse.Namespace) -> str:
    """How the table's seeds were used, for its caption."""
    seeds = train_seeds(args)
    if len(seeds) == 1:
        return (f"seed {seeds[0]} (one seed: a difference needs 3 seeds, "
                "docs/EVALUATION.md)")
    return (f"training seeds {', '.join(map(str, seeds))} on the data of seed {args.seed}; "
            "cells are mean ± std over the seeds (a difference smaller than the spread is no "
            "difference)")


#: the per-seed numbers :func:`aggregate_rows` averages (accuracies, budget)
MEAN_KEYS = ("knn_top1", "linear_top1", "chars_top1", "steps", "images", "seconds")


def aggregate_rows(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per method over several seeds' rows (each list in the same method order):
    each of :data:`MEAN_KEYS` becomes its mean, with ``<key>_std`` (sample std, 0 for one seed)
    and ``<key>_all`` (the per-seed values); the rest is taken from the first seed."""
    import statistics

    out = []
    for group in zip(*per_seed):
        methods = {r["method"] for r in group}
        if len(methods) != 1:
            raise ValueError(f"aggregate_rows: rows of different methods {sorted(methods)}")
        row = dict(group[0])
        row["seeds"] = [r.get("seed") for r in group]
        for key in MEAN_KEYS:
            vals = [r[key] for r in group if r.get(key) is not None]
            if not vals:
                continue
            row[key] = statistics.mean(vals)
            row[f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[f"{key}_all"] = vals
        owns = [r.get("own", "–") for r in group]
        row["own"] = owns[0] if len(set(owns)) == 1 else " / ".join(owns)
        planned = [r.get("planned_steps") for r in group]
        row["planned_steps"] = (round(statistics.mean(planned)) if all(planned) else None)
        out.append(row)
    return out


def pct_cell(row: dict[str, Any], key: str) -> str:
    """An accuracy in %, with ``± std`` when the row averages several seeds."""
    if row.get(key) is None:
        return "–"
    if len(row.get(f"{key}_all", [])) > 1:
        return f"{100 * row[key]:.1f} ± {100 * row[f'{key}_std']:.1f}"
    return f"{100 * row[key]:.1f}"


def format_markdown(rows: list[dict[str, Any]], args: argparse.Namespace, n: dict[str, int]
                    ) -> str:
    """The comparison table (accuracies in %) and how it was made."""
    budget = (f"the same wall-clock budget of {args.minutes:g} min of training per method "
              "(each method's step count, and so its lr / momentum schedules, sized from a timed "
              f"40-step probe; at most {args.steps} steps; online monitor off)"
              if args.minutes else f"{args.steps} steps per method")
    recipes = ("each method's CPU recipe `configs/<method>_cpu.yaml` where one exists, else its "
               "defaults" if args.recipes == "cpu" else "each method's defaults "
               "`configs/<method>.yaml`")
    lines = [
        f"Budget: {budget}, batch {args.batch_size}, {args.arch} at {args.image_size} px, "
        f"{seeds_phrase(args)}; "
        f"{recipes}, with the shared size above. "
        f"Toy-face identities: {n['num_classes']} identities, {n['n_train']} gallery "
        f"(split/train) / {n['n_test']} query (split/test) images"
        f"{'' if args.minutes else '; the online monitor used split/val'}. Golden faces by "
        "character: kNN top-1 on its test split (gallery: its train). Pretrain time: the whole "
        "fit, setup included (the budget's clock starts at the first step).",
        "",
        "| method | config | pretrained on | steps | images seen | pretrain time (s) | "
        "GFLOPs / step | kNN top-1 (%) | linear top-1 (%) | faces by character kNN top-1 (%) | "
        "method's own held-out metric |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gf = f"{r['flops_per_step'] / 1e9:.1f}" if r.get("flops_per_step") else "–"
        lines.append(
            f"| {r['method']} | {r.get('config', '–')} | {r['data']} | {steps_cell(r)} | "
            f"{round(r.get('images', 0))} | "
            f"{r['seconds']:.0f} | {gf} | {pct_cell(r, 'knn_top1')} | "
            f"{pct_cell(r, 'linear_top1')} | {pct_cell(r, 'chars_top1')} | {r['own']} |"
        )
    return "\n".join(lines) + "\n"


def run_compare(args: argparse.Namespace) -> str:
    """Everything: data, one pretraining run per method, the evaluations beside random init and
    raw pixels, the table. Returns markdown."""
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.outdir import prepare_out_dir

    known = registered_methods()
    methods = [m.strip() for m in (args.methods or ",".join(known)).split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)} "
                        f"(choose from {', '.join(known)})")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds: each seed once, got {' '.join(map(str, args.seeds))}")
    if args.minutes is not None and args.minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    # a folder this command did not write (no compare marker) is refused, never overwritten
    out = prepare_out_dir(args.out, "compare")
    faces, prep = prepare_data(out / "data", args.identities, args.per_identity, args.books,
                               args.pages, args.seed)
    train_dir, test_dir = faces / "split" / "train", faces / "split" / "test"
    val_dir = faces / "split" / "val"
    chars = prep / "faces_by_character"
    # with --minutes the online kNN monitor is off: its embedding passes would eat into the
    # budget (the final encoder is evaluated below anyway); with --steps it watches split/val
    monitor = (["data.val_train=null", "data.val_test=null"] if args.minutes else
               [f"data.val_train={train_dir}", f"data.val_test={val_dir}"])
    seeds = train_seeds(args)
    per_seed: list[list[dict[str, Any]]] = []
    n: dict[str, int] = {}
    for seed in seeds:
        # one seed keeps the flat layout OUT/runs/METHOD; several go to OUT/runs/seedS/METHOD
        sub = Path() if len(seeds) == 1 else Path(f"seed{seed}")
        common = [*monitor,
                  f"model.arch={args.arch}", f"trainer.max_steps={args.steps}",
                  "trainer.max_epochs=-1", f"data.batch_size={args.batch_size}",
                  f"data.image_size={args.image_size}", f"data.num_workers={args.num_workers}",
                  f"seed={seed}", "trainer.enable_progress_bar=false",
                  f"trainer.checkpoint_every_n_steps={max(args.steps, 1)}"]
        rows: list[dict[str, Any]] = []
        for method in methods:
            data = prep if method == "person" else train_dir
            log.info("compare: pretraining %s on %s (seed %d)", method, data, seed)
            run_dir = out / "runs" / sub / method
            run = pretrain_one(method, data, run_dir, common, args.minutes,
                               config_file=recipe_file(method, args.recipes),
                               max_steps=args.steps)
            run["config"] = Path(recipe_file(method, args.recipes) or f"{method}.yaml").name
            encoder = resolve_encoder(run["encoder"])
            rows.append({"method": method, "seed": seed, "data": "toy comics panels"
                         if method == "person" else "toy faces (split/train)", **run,
                         **evaluate_row(encoder, train_dir, test_dir, chars,
                                        out / "eval" / sub / method, args),
                         "own": own_metric(method, run_dir)})
        from backbone_ssl.evaluation.pixels import pixel_encoder

        for name, enc in (("random init", resolve_encoder(f"random:{args.arch}",
                                                          input_size=args.image_size,
                                                          seed=seed)),
                          (f"raw pixels {args.image_size} px", pixel_encoder(args.image_size))):
            rows.append({"method": name, "seed": seed, "data": "–", "steps": 0, "images": 0,
                         "seconds": 0.0, "flops_per_step": None, "encoder": enc.arch,
                         **evaluate_row(enc, train_dir, test_dir, chars,
                                        out / "eval" / sub / enc.arch.replace(":", "_"), args),
                         "own": "–"})
        n = rows[-1].pop("counts")
        for r in rows:
            r.pop("counts", None)
        per_seed.append(rows)
        if len(seeds) > 1:  # a finished seed is kept even if a later one fails
            write_json_atomic(out / f"compare_seed{seed}.json",
                              {"args": vars(args), "counts": n, "rows": rows})
    rows = per_seed[0] if len(seeds) == 1 else aggregate_rows(per_seed)
    text = format_markdown(rows, args, n)
    write_text_atomic(out / "compare.md", text)
    write_json_atomic(out / "compare.json", {"args": vars(args), "counts": n, "rows": rows,
                                             "per_seed": per_seed})
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
                   help="the same wall-clock budget of training per method: a timed probe sizes "
                        "each method's steps (and schedules) to M minutes, at most --steps")
    p.add_argument("--recipes", choices=("default", "cpu"), default="default",
                   help="default: configs/<method>.yaml; cpu: configs/<method>_cpu.yaml where "
                        "the recipe study wrote one (benchmarks/RECIPES.md)")
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--per-identity", type=int, default=40)
    p.add_argument("--books", type=int, default=30, help="toy comic books (person)")
    p.add_argument("--pages", type=int, default=4)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the toy data, and of training when --seeds is not given")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds (each method and random init once per seed, on the data "
                        "of --seed); the table shows mean ± std")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from backbone_ssl.quiet import install_quiet_filters

    install_quiet_filters()  # as the backbone-ssl command: known library noise dropped
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
