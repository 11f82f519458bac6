"""``backbone-ssl pretrain``: the Lightning Trainer around a method.

Lightning does the loop, devices, DDP, precision, checkpoint/resume, progress bar and CSV logs;
this module only wires the run directory:

    RUN/config.yaml              the resolved config (what `--resume` reads back)
    RUN/checkpoints/last.ckpt    rewritten atomically every `trainer.checkpoint_every_n_steps`
    RUN/metrics.csv              Lightning CSVLogger
    RUN/plots/*.png              loss, kNN, lr, EMA momentum, collapse monitor
    RUN/encoder/                 the exported frozen backbone (timm folder), at the end
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from backbone_ssl.checkpointing import AtomicCheckpointIO, FlushingCheckpoint, remove_stale_temps
from backbone_ssl.config import RunConfig, load_config, to_yaml
from backbone_ssl.curves import plot_curves
from backbone_ssl.data.sampling import RestoreLoaderState, ResumableLoader
from backbone_ssl.errors import UserError
from backbone_ssl.export import export_encoder, read_checkpoint
from backbone_ssl.io import write_text_atomic
from backbone_ssl.methods import get_method
from backbone_ssl.methods.base import SSLMethod
from backbone_ssl.monitors import CollapseMonitor, OnlineKNN
from backbone_ssl.runlog import RunCSVLogger, truncate_metrics

log = logging.getLogger(__name__)

LAST_CKPT = Path("checkpoints") / "last.ckpt"
#: Set while ``trainer.fit`` runs, so DDP processes Lightning starts find the same run dir.
RUN_DIR_ENV = "BACKBONE_SSL_RUN_DIR"


@dataclass
class RunResult:
    """What a finished ``pretrain`` leaves behind."""

    run_dir: Path
    encoder_dir: Path
    steps: int
    seconds: float
    skipped_images: int
    images_per_second: float


def resolve_precision(cfg: RunConfig) -> str:
    """``auto`` -> ``bf16-mixed`` on a GPU, ``32-true`` on CPU (bf16 autocast is slow on CPU)."""
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    acc = cfg.trainer.accelerator
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def build_config(method: str, config_file: str | None, data: str | None, out: str | None,
                 resume: bool, overrides: Sequence[str]) -> tuple[RunConfig, Path]:
    """Resolve the run's config and directory (``--resume`` re-reads ``RUN/config.yaml``)."""
    cls = get_method(method)
    default_dir = Path("runs") / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    # DDP processes started by Lightning re-run the command: they inherit rank 0's run dir
    run_dir = Path(out or os.environ.get(RUN_DIR_ENV) or default_dir)
    if resume:
        if not (run_dir / LAST_CKPT).is_file():
            raise UserError(f"nothing to resume: {run_dir / LAST_CKPT} does not exist "
                            "(start the run without --resume)")
        if config_file is None and (run_dir / "config.yaml").is_file():
            config_file = str(run_dir / "config.yaml")
    elif (run_dir / LAST_CKPT).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it "
                        "or choose another --out")
    cfg = load_config(cls.config_cls, method, config_file, overrides, data__path=data)
    if cfg.method != method:
        raise UserError(f"config is for method '{cfg.method}', not '{method}'")
    if not cfg.data.path:
        raise UserError("no training data: pass --data DIR (an image folder, an iCartoonFace "
                        "root or a `golden prepare` output)")
    return cfg, run_dir


def make_loader(model: SSLMethod, cfg: RunConfig) -> DataLoader:
    """Shuffled, resumable DataLoader over ``model.train_dataset()`` (data/sampling.py).

    Its sampler is a DDP-aware ``DistributedSampler`` (so Lightning keeps it) seeded by
    ``(seed, epoch)``; Lightning saves its position in every checkpoint and a resumed run skips the
    batches already seen in the current epoch. Augmentations are seeded per sample.
    """
    dataset = model.train_dataset()
    bs = cfg.data.batch_size
    if bs < 2:
        raise UserError("config key 'data.batch_size' must be >= 2 (heads use batch norm)")
    workers = cfg.data.num_workers
    return ResumableLoader(
        dataset, batch_size=min(bs, len(dataset)), seed=cfg.seed,
        drop_last=len(dataset) > bs, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
    )


def trains_on_cpu(cfg: RunConfig) -> bool:
    """Whether ``trainer.accelerator`` resolves to the CPU (``auto``: no CUDA or MPS device)."""
    accelerator = str(cfg.trainer.accelerator).lower()
    if accelerator == "auto":
        return not (torch.cuda.is_available() or torch.backends.mps.is_available())
    return accelerator == "cpu"


def check_trainer_options(cfg: RunConfig) -> None:
    """One-line errors, before anything is written, for trainer options this machine cannot run."""
    if cfg.trainer.sync_batchnorm and trains_on_cpu(cfg):
        raise UserError("config key 'trainer.sync_batchnorm=true' needs GPUs (torch's "
                        "SyncBatchNorm only works with GPU modules); drop it when training on "
                        "the CPU")


def collapse_warmup_fraction(cfg: RunConfig) -> float:
    """Fraction of the steps before the collapse monitor may fire: the lr warm-up, at least 10%
    (DINO: also its teacher-temperature warm-up), when a fresh head still sits near its collapse
    value."""
    frac = max(cfg.optim.warmup_fraction, 0.1)
    method_section = getattr(cfg, cfg.method, None)
    return max(frac, float(getattr(method_section, "warmup_teacher_temp_fraction", 0.0)))


def make_trainer(cfg: RunConfig, run_dir: Path, callbacks: list) -> pl.Trainer:
    """A Lightning Trainer configured from ``cfg.trainer``, logging into ``run_dir``."""
    t = cfg.trainer
    ckpt = FlushingCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=max(1, t.checkpoint_every_n_steps), save_on_train_epoch_end=True,
    )
    return pl.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(cfg), default_root_dir=str(run_dir),
        logger=RunCSVLogger(run_dir),
        callbacks=[ckpt, RestoreLoaderState(), *callbacks], plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, t.log_every_n_steps), gradient_clip_val=t.gradient_clip_val,
        deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        limit_train_batches=t.limit_train_batches, enable_model_summary=False,
        sync_batchnorm=t.sync_batchnorm,
    )


def pretrain(method: str, *, config_file: str | None = None, data: str | None = None,
             out: str | None = None, resume: bool = False,
             overrides: Sequence[str] = (), callbacks: Sequence[pl.Callback] = ()) -> RunResult:
    """Run one pretraining job end to end (train, checkpoint, export, plots).

    ``callbacks`` are extra Lightning callbacks (e.g. the search's pruning reporter).
    """
    cfg, run_dir = build_config(method, config_file, data, out, resume, overrides)
    check_trainer_options(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    model = get_method(method)(cfg)
    loader = make_loader(model, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    callbacks = list(callbacks)
    if cfg.data.val_train and cfg.data.val_test:
        callbacks.insert(0, OnlineKNN(cfg.data.val_train, cfg.data.val_test,
                                   image_size=cfg.data.image_size,
                                   every_n_epochs=cfg.data.val_every_n_epochs))
    collapse = CollapseMonitor(warmup_fraction=collapse_warmup_fraction(cfg),
                               stop=cfg.trainer.stop_on_collapse)
    callbacks.append(collapse)
    trainer = make_trainer(cfg, run_dir, callbacks)
    ckpt_path = str(run_dir / LAST_CKPT) if resume else None
    steps_before = 0
    if ckpt_path:
        steps_before = int(read_checkpoint(ckpt_path).get("global_step", 0))  # refuses pickles
        if rank_zero_only.rank == 0:
            # a checkpoint at global step G holds steps 0..G-1: later rows are redone on resume
            truncate_metrics(run_dir / "metrics.csv", steps_before - 1)
            remove_stale_temps(run_dir)
    start = time.perf_counter()
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
    seconds = time.perf_counter() - start
    steps = int(trainer.global_step)
    # the final state, whatever the step count, so --resume and export see the finished run
    if not collapse.hold_checkpoints:  # a collapse stop keeps the last good checkpoint
        trainer.save_checkpoint(run_dir / LAST_CKPT, weights_only=False)
    enc_dir = run_dir / "encoder"
    if trainer.is_global_zero:
        export_encoder(
            model.backbone, cfg.model.arch, enc_dir, input_size=cfg.data.image_size,
            meta={"method": method, "data": str(cfg.data.path), "steps": steps,
                  **collapse.export_meta()},
        )
        plot_curves(run_dir / "metrics.csv", run_dir / "plots")
    batch = loader.batch_size or cfg.data.batch_size
    if collapse.collapsed:
        log.warning("the encoder is marked collapsed: true (signal: %s at step %s); see "
                    "docs/COLLAPSE.md", collapse.signal, collapse.step)
    ips = (steps - steps_before) * batch * trainer.world_size / max(seconds, 1e-9)
    if model.skipped_images:
        log.warning("skipped %d undecodable image reads during training", model.skipped_images)
    return RunResult(run_dir, enc_dir, steps, seconds, model.skipped_images, ips)


