"""Atomic checkpoint files for Lightning: write a temporary file, fsync, then rename."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from backbone_ssl.io import atomic_path
from backbone_ssl.methods.base import NonFiniteLossError


def require_finite(state: Mapping[str, Any], step: int, path: Any) -> None:
    """Raise ``NonFiniteLossError`` naming the first non-finite floating tensor of ``state``.

    Called before every checkpoint write, so a diverged model never replaces the last good file.
    """
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(
                torch.isfinite(value).all()):
            raise NonFiniteLossError(
                f"non-finite weights '{name}' at step {step}; not saving, {path} keeps the last "
                "good checkpoint; try a lower optim.lr or trainer.gradient_clip_val=1.0"
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear whole or not at all.

    A kill at any moment leaves either the previous ``last.ckpt`` or the new one, never a torn file;
    a state with NaN/inf weights is refused (:func:`require_finite`), so the file stays good.
    Loading always uses ``weights_only=True``: checkpoints hold tensors and plain containers only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        require_finite(checkpoint.get("state_dict", {}), int(checkpoint.get("global_step", -1)),
                       path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return torch.load(Path(path), map_location=map_location or "cpu", weights_only=True)


class FlushingCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that flushes the loggers (metrics.csv) before each checkpoint.

    After a kill the metrics file then holds every row logged before the checkpoint. Lightning logs
    a step's row after the checkpoint hook of that step, so the row of the step that triggered the
    checkpoint is the one row a kill in the following step can lose.
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if any(getattr(cb, "hold_checkpoints", False) for cb in trainer.callbacks):
            return  # the collapse monitor stopped the run: last.ckpt keeps the last good state
        for logger in trainer.loggers:
            logger.save()
        super()._save_checkpoint(trainer, filepath)


def remove_stale_temps(run_dir: str | os.PathLike) -> int:
    """Delete what a kill left mid-write (``checkpoints/.last.ckpt.*.tmp``, ``.encoder.tmp-*``,
    ``.encoder.old-*``); returns how many. Call before resuming, on rank 0 only."""
    run_dir = Path(run_dir)
    stale = [*run_dir.glob("checkpoints/.*.tmp"), *run_dir.glob(".encoder.tmp-*"),
             *run_dir.glob(".encoder.old-*")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(stale)
