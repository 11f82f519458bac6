"""Helpers shared by the methods with their own training step (``inpaint``, ``person``,
``identity``) and the online monitors: the non-finite-loss guard, a seeded held-out split, when to
run a held-out evaluation, and where plots go."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from backbone_ssl.errors import UserError
from backbone_ssl.methods.base import NonFiniteLossError


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming ``what`` and the step when ``loss`` is NaN/inf."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"non-finite {what} ({loss.detach().float().item()}) at step {step}; "
            "try a lower optim.lr or trainer.precision=32-true; the last checkpoint is kept"
        )


def split_indices(n: int, fraction: float, seed: int, what: str) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)`` into ``(train, held_out)``; both non-empty.

    ``held_out`` has ``round(fraction * n)`` items, at least one; UserError when ``n < 2`` or
    ``fraction`` is not in (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"held-out fraction for {what} must be in (0, 1), got {fraction}")
    if n < 2:
        raise UserError(f"{what} has {n} image(s): need at least 2 (one to train, one held out)")
    n_val = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def should_validate(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """At the end of a training epoch: every ``every_n_epochs`` epochs, and always at the last one
    (``max_epochs`` reached or ``max_steps`` reached mid-epoch)."""
    if trainer.sanity_checking:
        return False
    if (trainer.current_epoch + 1) % max(1, every_n_epochs) == 0:
        return True
    if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
        return True
    max_epochs = trainer.max_epochs  # -1 or None: unbounded (the run ends by max_steps)
    return max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs


def plots_dir(trainer: pl.Trainer) -> Path:
    """``RUN/plots`` (``RUN`` is the trainer's ``default_root_dir``)."""
    return Path(trainer.default_root_dir) / "plots"
