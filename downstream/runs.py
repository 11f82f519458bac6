"""What every downstream run shares: the Trainer, the run folder, the report and the figures.

A run folder holds ``config.yaml``, ``metrics.csv`` (Lightning CSVLogger), ``checkpoints/last.ckpt``
(``trainer.save_checkpoint``), ``report.json``, ``report.md`` and ``plots/*.png``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytorch_lightning as pl
import torch
import yaml

from backbone_ssl.config import resolve_precision, to_yaml
from backbone_ssl.curves import plot_curves
from backbone_ssl.data.signed import to_unit
from backbone_ssl.io import atomic_path, write_json_atomic, write_text_atomic
from backbone_ssl.runlog import RunCSVLogger

log = logging.getLogger("backbone_ssl.downstream")

#: FD-enc's one-line caveat, repeated in every report that carries it.
FD_ENC_NOTE = ("KID and FD are measured in the features of a fixed reference encoder "
               "(metrics.ref_encoder; FD in a PCA space fitted on real features); they are not "
               "Inception KID/FID and are comparable only between runs with the same reference "
               "encoder and sample counts.")
RANDOM_REF_NOTE = ("The reference encoder is a random network (last resort): name a trained "
                   "domain encoder in metrics.ref_encoder for numbers that mean something.")


def reference_info(metrics_cfg: Any) -> dict:
    """The report's ``reference`` block: which encoder KID and FD were measured in."""
    spec = metrics_cfg.ref_encoder
    return {"encoder": spec, "seed": metrics_cfg.ref_seed, "random": spec.startswith("random:"),
            "pca_dim": metrics_cfg.pca_dim, "kid_subset_size": metrics_cfg.kid_subset_size,
            "note": FD_ENC_NOTE}


def start_run(run_dir: str | os.PathLike, cfg: Any, resume: bool = False) -> Path:
    """Create the run folder and write the resolved ``config.yaml``.

    A fresh run (not ``resume``) into the folder of an earlier run of the same task starts a new
    ``metrics.csv`` (the logger would append to the old one, mixing two runs' curves); a
    ``metrics.csv`` that no run of this task wrote is refused, never deleted."""
    from backbone_ssl.errors import UserError
    from backbone_ssl.outdir import output_command

    run = Path(run_dir)
    metrics = run / "metrics.csv"
    if not resume and metrics.is_file():
        saved = run / "config.yaml"
        old_task = (yaml.safe_load(saved.read_text()) or {}).get("task") if saved.is_file() \
            else None
        if old_task != cfg.task and output_command(run) != f"downstream {cfg.task}":
            raise UserError(f"{run} holds a metrics.csv that no downstream {cfg.task} run wrote: "
                            "choose a new --out")
        metrics.unlink()
        log.info("starting a new %s (an earlier run's curves are replaced)", metrics)
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "config.yaml", to_yaml(cfg))
    return run


def make_trainer(cfg: Any, run_dir: Path, optimizer_steps_per_batch: int = 1) -> pl.Trainer:
    """A Trainer for ``trainer.max_steps`` training batches, logging ``RUN/metrics.csv``; no
    checkpoint callback (:func:`fit` saves the final state).

    Lightning counts ``global_step`` in optimiser steps; a GAN batch takes
    ``optimizer_steps_per_batch`` of them (``n_critic`` discriminator steps + 1 generator step),
    so the limit is scaled to keep the budget in batches (generator updates).
    """
    t = cfg.trainer
    minutes = getattr(t, "max_minutes", None)
    return pl.Trainer(
        max_steps=t.max_steps * optimizer_steps_per_batch, max_epochs=t.max_epochs,
        max_time=None if minutes is None else {"seconds": float(minutes) * 60.0},
        accelerator=t.accelerator, devices=t.devices, precision=resolve_precision(cfg),
        default_root_dir=str(run_dir), logger=RunCSVLogger(run_dir), enable_checkpointing=False,
        log_every_n_steps=max(1, t.log_every_n_steps), deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def fit(trainer: pl.Trainer, model: pl.LightningModule, loader, cfg: Any,
        run_dir: Path, ckpt_path: Path | None = None, resumable: bool = False
        ) -> dict[str, float]:
    """Train (continuing ``ckpt_path`` when given); save ``RUN/checkpoints/last.ckpt`` when
    asked, with optimiser and loop state when ``resumable``. Returns ``{"steps", "seconds"}``
    with ``steps`` in training batches (generator updates for a GAN), counted from step 0."""
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path,
                **({"weights_only": True} if ckpt_path is not None else {}))
    seconds = time.perf_counter() - start
    if cfg.trainer.save_checkpoint:
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                                weights_only=not resumable)
    batches = int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)
    return {"steps": batches, "optimizer_steps": int(trainer.global_step),
            "seconds": round(seconds, 2)}


def plot_training(run_dir: Path, curves: dict[str, tuple[str, ...]]) -> list[str]:
    """Loss curves from ``metrics.csv`` into ``plots/``; returns the written file names."""
    return [p.name for p in plot_curves(run_dir / "metrics.csv", run_dir / "plots", curves)]


def finite(value: Any) -> Any:
    """JSON-safe numbers: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


def write_report(run_dir: Path, report: dict, title: str, notes: Sequence[str] = ()) -> dict:
    """``report.json`` (NaN -> null) and a short ``report.md``; returns the JSON-safe report."""
    report = finite(report)
    write_json_atomic(run_dir / "report.json", report)
    enc = report["encoder"]
    summary = (f"Encoder `{enc['spec']}` ({enc.get('method', '?')}, {enc['arch']}, "
               f"{enc['input_size']}px, {'frozen' if enc['frozen'] else 'fine-tuned'}); "
               f"{report['budget']['steps']} steps in {report['budget']['seconds']:.0f}s.")
    lines = [f"# {title}", "", summary, "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["metrics"].items()]
    if report.get("data"):
        lines += ["", "Data: " + ", ".join(f"{k}={_fmt(v)}" for k, v in report["data"].items())]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if report.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`plots/{p}`" for p in report["plots"])]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")
    return report


def save_image_grid(rows: Sequence[Sequence[torch.Tensor]], titles: Sequence[str],
                    path: str | os.PathLike, caption: str = "") -> Path:
    """A grid of ``[3,H,W]`` images in [-1, 1] (one list per row) as a PNG, with column
    ``titles`` and an optional ``caption`` above."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = Figure(figsize=(1.4 * n_cols, 1.4 * n_rows + 0.3))
    FigureCanvasAgg(fig)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1)
            arr = to_unit(img.detach().float().cpu()).permute(1, 2, 0).numpy()
            ax.imshow(arr)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
    if caption:
        fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


def seeded_indices(n: int, k: int, seed: int) -> list[int]:
    """``min(n, k)`` distinct indices of ``range(n)`` (seeded, sorted)."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:min(n, k)].tolist())


def eval_device(cfg: Any) -> torch.device:
    """Where the post-training evaluation runs: CUDA when available and not ``accelerator=cpu``."""
    use_gpu = torch.cuda.is_available() and cfg.trainer.accelerator not in ("cpu",)
    return torch.device("cuda" if use_gpu else "cpu")


def eval_progress(iterable: Iterable, what: str, total: int | None = None) -> Iterable:
    """Announce a held-out evaluation (one log line: ``evaluating <what>``) and wrap its batches
    in a tqdm bar on stderr, shown only when stderr is a terminal (as ``eval``'s embedding)."""
    from tqdm.auto import tqdm

    log.info("evaluating %s", what)
    return tqdm(iterable, desc=f"evaluating {what}", total=total, unit="batch", disable=None,
                leave=False)
