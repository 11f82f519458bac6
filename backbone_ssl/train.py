"""``backbone-ssl pretrain``: the Lightning Trainer around a method.

Lightning does the loop, devices, DDP, precision, checkpoint/resume, progress bar, CSV and
TensorBoard logs;
this module only wires the run directory:

    RUN/config.yaml              the resolved config (what `--resume` reads back)
    RUN/checkpoints/last.ckpt    rewritten atomically every `trainer.checkpoint_every_n_steps`
    RUN/metrics.csv              Lightning CSVLogger (``trainer.logger``: csv | both)
    RUN/tensorboard/             Lightning TensorBoardLogger event files, the same metric names
                                 (``trainer.logger``: tensorboard | both)
    RUN/plots/*.png              loss, kNN, lr, EMA momentum, collapse monitor
    RUN/encoder/                 the exported frozen backbone (timm folder), at the end
                                 (the `export.network` one: DINO's teacher, BYOL's online)
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
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from backbone_ssl.checkpointing import AtomicCheckpointIO, FlushingCheckpoint, remove_stale_temps
from backbone_ssl.config import RunConfig, load_config, resolve_precision, to_yaml
from backbone_ssl.curves import plot_curves
from backbone_ssl.data.sampling import RestoreLoaderState, ResumableLoader
from backbone_ssl.errors import UserError
from backbone_ssl.export import export_encoder, read_checkpoint
from backbone_ssl.io import write_text_atomic
from backbone_ssl.methods import get_method
from backbone_ssl.methods.base import PretrainMethod
from backbone_ssl.monitors import CollapseMonitor, OnlineKNN
from backbone_ssl.outdir import prepare_out_dir
from backbone_ssl.progress import StepProgressBar
from backbone_ssl.runlock import RunLock
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


def build_config(method: str, config_file: str | None, data: str | None, out: str | None,
                 resume: bool, overrides: Sequence[str]) -> tuple[RunConfig, Path]:
    """Resolve the run's config and directory (``--resume`` re-reads ``RUN/config.yaml``)."""
    cls = get_method(method)
    default_dir = Path("runs") / f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    # DDP processes started by Lightning re-run the command: they inherit rank 0's run dir
    if resume and not (out or os.environ.get(RUN_DIR_ENV)):
        raise UserError("--resume needs --out RUN: the run folder to continue")
    run_dir = Path(out or os.environ.get(RUN_DIR_ENV) or default_dir)
    if resume:
        if not (run_dir / LAST_CKPT).is_file():
            raise UserError(f"nothing to resume: {run_dir / LAST_CKPT} does not exist "
                            "(start the run without --resume)")
        if config_file is None and (run_dir / "config.yaml").is_file():
            config_file = str(run_dir / "config.yaml")
        check_resume_method(run_dir, method)
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


#: Keys an override given with ``--resume`` may change: they alter neither tensor shapes nor
#: the sampler, so the resumed run stays the same run. Every other key is frozen.
RESUME_SAFE_KEYS = frozenset({
    "trainer.max_steps", "trainer.max_epochs", "trainer.log_every_n_steps",
    "trainer.checkpoint_every_n_steps", "trainer.enable_progress_bar", "trainer.precision",
    "trainer.gradient_clip_val", "trainer.accelerator", "data.num_workers", "data.val_train",
    "data.val_test", "data.val_every_n_epochs", "optim.lr", "trainer.logger",
})


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _same_value(key: str, old: object, new: object) -> bool:
    if key == "data.path" and old is not None and new is not None:
        return Path(str(old)).expanduser().resolve() == Path(str(new)).expanduser().resolve()
    return old == new


def check_resume_method(run_dir: Path, method: str) -> None:
    """Refuse ``pretrain M --resume`` on a run of another method, naming the right command."""
    from omegaconf import OmegaConf

    try:
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # noqa: BLE001 - unreadable/missing: load_config reports it properly
        return
    other = saved.get("method") if isinstance(saved, dict) else None
    if isinstance(other, str) and other and other != method:
        raise UserError(f"{run_dir} is a '{other}' run, not '{method}'; resume it with "
                        f"`backbone-ssl pretrain {other} --out {run_dir} --resume`")


def check_resume_changes(cfg: RunConfig, ckpt_cfg: dict, run_dir: Path) -> list[str]:
    """Compare the resumed config with the checkpoint's; returns the safe keys that change.

    A change to a frozen key (anything not in :data:`RESUME_SAFE_KEYS`: method, model.*,
    data.path, data.image_size, data.batch_size, the method's heads, ...) is a UserError naming
    the key, raised before anything is written.
    """
    from backbone_ssl.config import to_dict

    new, old = _flatten(to_dict(cfg)), _flatten(ckpt_cfg)
    changed = [k for k in new if k in old and not _same_value(k, old[k], new[k])]
    frozen = [k for k in changed if k not in RESUME_SAFE_KEYS]
    if frozen:
        k = frozen[0]
        raise UserError(
            f"--resume cannot change '{k}' (checkpoint: {old[k]!r}, now: {new[k]!r}): it changes "
            f"the model, the data or the sampler of {run_dir}; start a new run with another --out")
    return changed


class WriteConfigOnStart(pl.Callback):
    """Rewrite ``RUN/config.yaml`` once the resumed state has loaded (``on_train_start``)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            write_text_atomic(self.path, self.text)


def effective_log_every(cfg: RunConfig, steps_per_epoch: int) -> int:
    """``trainer.log_every_n_steps``, capped at the run's length so a short run still logs."""
    t = cfg.trainer
    total = t.max_steps if t.max_steps and t.max_steps > 0 else steps_per_epoch * max(
        1, t.max_epochs)
    return max(1, min(t.log_every_n_steps, total))


def make_loader(model: PretrainMethod, cfg: RunConfig) -> DataLoader:
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


#: ``RUN/<this>/``: the TensorBoard event files (``tensorboard --logdir RUN/tensorboard``)
TENSORBOARD_DIR = "tensorboard"


def make_loggers(kind: str, run_dir: Path) -> list[Logger]:
    """The run's Lightning loggers for ``trainer.logger`` (``csv`` | ``tensorboard`` | ``both``):
    ``RUN/metrics.csv`` (kept across ``--resume``) and/or TensorBoard event files in
    ``RUN/tensorboard/``; every logger receives the same metric names."""
    loggers: list[Logger] = []
    if kind in ("csv", "both"):
        loggers.append(RunCSVLogger(run_dir))
    if kind in ("tensorboard", "both"):
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name=TENSORBOARD_DIR, version="",
                                         default_hp_metric=False))
    if not loggers:
        raise UserError(f"config key 'trainer.logger' must be one of csv, tensorboard, both, "
                        f"got '{kind}'")
    return loggers


def make_trainer(cfg: RunConfig, run_dir: Path, callbacks: list,
                 log_every: int | None = None) -> pl.Trainer:
    """A Lightning Trainer configured from ``cfg.trainer``, logging into ``run_dir``."""
    t = cfg.trainer
    log_every = max(1, log_every or t.log_every_n_steps)
    # the bar reads the logged loss back to the host each refresh: on an accelerator only at
    # logging steps, so no step waits for the device (methods check non-finite losses likewise)
    refresh = 1 if trains_on_cpu(cfg) else log_every
    bar = [StepProgressBar(refresh_rate=refresh)] if t.enable_progress_bar else []
    ckpt = FlushingCheckpoint(
        dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
        every_n_train_steps=max(1, t.checkpoint_every_n_steps), save_on_train_epoch_end=True,
    )
    return pl.Trainer(
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=resolve_precision(cfg), default_root_dir=str(run_dir),
        logger=make_loggers(str(t.logger), run_dir),
        callbacks=[ckpt, RestoreLoaderState(), *bar, *callbacks], plugins=[AtomicCheckpointIO()],
        log_every_n_steps=log_every, gradient_clip_val=t.gradient_clip_val,
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
    get_method(method).network_attr(cfg.export.network)  # a network the method lacks: refused
    # DDP processes Lightning starts re-run the command inside rank 0's run: no guard, no lock
    child = bool(os.environ.get(RUN_DIR_ENV)) and rank_zero_only.rank != 0
    ckpt_path = str(run_dir / LAST_CKPT) if resume else None
    steps_before = 0
    if ckpt_path:
        ckpt = read_checkpoint(ckpt_path)  # refuses pickles
        steps_before = int(ckpt.get("global_step", 0))
        saved = ckpt.get("hyper_parameters", {}).get("config")
        if isinstance(saved, dict):
            check_resume_changes(cfg, saved, run_dir)
        del ckpt
    elif not child:
        prepare_out_dir(run_dir, "pretrain", sources=[cfg.data.path, config_file])
    lock = None if child else RunLock(run_dir).acquire()
    try:
        return _pretrain_locked(method, cfg, run_dir, ckpt_path, steps_before, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _pretrain_locked(method: str, cfg: RunConfig, run_dir: Path, ckpt_path: str | None,
                     steps_before: int, callbacks: Sequence[pl.Callback]) -> RunResult:
    """The body of :func:`pretrain`, run while the run folder's lock is held."""
    pl.seed_everything(cfg.seed, workers=True)
    model = get_method(method)(cfg)
    loader = make_loader(model, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = list(callbacks)
    if rank_zero_only.rank == 0:
        if ckpt_path:  # rewritten only once the checkpoint's state has loaded
            callbacks.append(WriteConfigOnStart(run_dir / "config.yaml", to_yaml(cfg)))
        else:
            write_text_atomic(run_dir / "config.yaml", to_yaml(cfg))
    if cfg.data.val_train and cfg.data.val_test:
        callbacks.insert(0, OnlineKNN(cfg.data.val_train, cfg.data.val_test,
                                   image_size=cfg.data.image_size,
                                   every_n_epochs=cfg.data.val_every_n_epochs))
    collapse = CollapseMonitor(warmup_fraction=collapse_warmup_fraction(cfg),
                               stop=cfg.trainer.stop_on_collapse)
    callbacks.append(collapse)
    steps_per_epoch = max(1, len(loader))
    trainer = make_trainer(cfg, run_dir, callbacks, effective_log_every(cfg, steps_per_epoch))
    if ckpt_path and rank_zero_only.rank == 0:
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
            model.network_backbone(), cfg.model.arch, enc_dir, input_size=cfg.data.image_size,
            meta={"method": method, "data": str(cfg.data.path), "steps": steps,
                  "network": cfg.export.network, **collapse.export_meta()},
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


