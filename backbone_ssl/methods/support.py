"""Helpers shared by the methods with their own training step (``inpaint``, ``person``,
``identity``) and the online monitors: the non-finite-loss guard (:class:`FiniteLossGuard`, no host
sync per step), a seeded held-out split, when to run a held-out evaluation, and where plots go."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch

from backbone_ssl.errors import UserError

#: stands for "no non-finite value seen" in :class:`FiniteLossGuard`'s first-bad-step tensors
_NO_STEP = 2**62
_ADVICE = "try a lower optim.lr or trainer.precision=32-true; the last checkpoint is kept"


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite; the run stops, last.ckpt is kept."""


def check_finite(loss: torch.Tensor, step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` naming ``what`` and the step when ``loss`` is NaN/inf.

    Reads the loss back to the host now (a GPU sync): in a training step use the method's
    :class:`FiniteLossGuard` (``self.loss_guard.observe``) instead.
    """
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"non-finite {what} ({loss.detach().float().item()}) at step {step}; {_ADVICE}")


class FiniteLossGuard:
    """Watches training losses for NaN/inf on the device, without a host sync per step.

    :meth:`observe` (every step, in ``training_step``) keeps, per loss name, the first step whose
    loss was not finite and that value, in two scalar tensors on the loss's device (a handful of
    tiny kernels, no read-back). :meth:`check` reads them back once and raises
    :class:`NonFiniteLossError` naming the loss and the first bad step. :class:`PretrainMethod`
    calls :meth:`check` at every logging step (when Lightning reads the logged metrics back
    anyway), before every checkpoint is written (so a diverged state never replaces the last good
    ``last.ckpt``) and at the end of training.
    """

    def __init__(self) -> None:
        #: loss name -> (first non-finite step or _NO_STEP [] int64, value at that step [] fp32)
        self._seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def observe(self, loss: torch.Tensor, step: int, what: str = "loss") -> None:
        """Record whether ``loss`` (any shape, usually ``[]``) is finite at ``step``; no sync."""
        value = loss.detach().float()
        bad = ~torch.isfinite(value).all()
        first, kept = self._seen.get(what, (None, None))
        if first is None or first.device != value.device:
            first = torch.full((), _NO_STEP, dtype=torch.int64, device=value.device)
            kept = torch.zeros((), dtype=torch.float32, device=value.device)
        new = bad & (first == _NO_STEP)
        # the first non-finite element is the value reported (nan, inf or -inf)
        flat = value.reshape(-1)  # (index_select, not x[t]: a 0-d index tensor is read back)
        shown = flat.index_select(0, (~torch.isfinite(flat)).long().argmax().reshape(1))[0]
        self._seen[what] = (first.masked_fill(new, step), torch.where(new, shown, kept))

    def check(self, reduce_min: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Read the record back (one sync) and raise :class:`NonFiniteLossError` if a loss was
        not finite, naming the earliest such loss and step.

        ``reduce_min`` takes the minimum over processes (DDP: ``trainer.strategy.reduce`` with
        ``"min"``), so every process raises together and names the same step; every process must
        call :meth:`check` at the same points.
        """
        if not self._seen:
            return
        names = sorted(self._seen)
        local = torch.stack([self._seen[n][0] for n in names])
        firsts = reduce_min(local.clone()) if reduce_min is not None else local
        firsts_host, local_host = firsts.tolist(), local.tolist()
        bad = [(step, n) for n, step in zip(names, firsts_host) if step != _NO_STEP]
        if not bad:
            return
        step, what = min(bad)
        i = names.index(what)
        value = (f"{self._seen[what][1].item()}" if local_host[i] == step
                 else "on another process")
        raise NonFiniteLossError(f"non-finite {what} ({value}) at step {step}; {_ADVICE}")

    def reset(self) -> None:
        """Forget what was observed."""
        self._seen.clear()


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
