"""A resumable, DDP-aware training loader: same batches after a kill as without one.

Lightning saves the state of every training loader that implements ``state_dict`` /
``load_state_dict`` (its ``_Stateful`` protocol) in ``checkpoint["loops"]["fit_loop"]
["state_dict"]["combined_loader"]`` and restores it before the first ``iter()`` on resume
(``FitLoop.on_save_checkpoint`` / ``_load_combined_loader_states``). :class:`ResumableLoader` is
such a loader:

- :class:`ResumableSampler` shuffles each epoch with a permutation seeded by ``(seed, epoch)`` and
  shards it over the DDP ranks exactly as ``torch``'s ``DistributedSampler`` does (it *is* one,
  so Lightning keeps it instead of injecting its own); rank and world size are read when an epoch
  starts, because the loader is built before Lightning starts the process group;
- it yields :class:`SeededIndex` items ``(index, seed)`` whose seed depends on ``(seed, epoch,
  index)`` only; :class:`SeededDataset` draws each item's random augmentations under that seed
  (:func:`seeded_rng`), so a resumed run sees the same augmented views as an uninterrupted one;
- the loader counts the batches it has handed out in the current epoch; after
  ``load_state_dict`` the next epoch with the saved number skips that many batches.

Lightning sets the train loader up early when ``configure_optimizers`` asks for
``trainer.estimated_stepping_batches`` (our LR schedule does), i.e. before it restores the loops,
and then skips the loader-state restore. :class:`RestoreLoaderState` applies the stashed states at
``on_train_start``, which still precedes the first batch (our loader starts an epoch lazily).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class SeededIndex(NamedTuple):
    """A dataset index with the seed for its random augmentations."""

    index: int
    seed: int


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch (numpy ``SeedSequence`` mixing)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU), numpy and python ``random`` for the block; restore them afterwards.

    torchvision and lightly transforms draw from these global generators. Only torch's CPU
    generator is seeded: ``torch.manual_seed`` would also queue a CUDA seed, which on CUDA builds
    records a stack trace at every call (about 0.1-0.6 ms per item, measured) and affects no
    augmentation, since the transforms run on the CPU.

    In a DataLoader worker nothing else draws from the worker's global generators, so they are
    seeded and not restored: saving and restoring numpy's Mersenne-Twister state alone costs
    about 50 us per item (of 72 us for the whole block, measured), a fifth of a small image's
    load-and-augment time. Each item seeds all three before it draws, so its views are the same.
    """
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        yield
        return
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _world() -> tuple[int, int]:
    """``(num_replicas, rank)`` of the running process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SeededDataset(Dataset):
    """Wraps any map-style dataset: item :class:`SeededIndex` ``(i, s)`` -> ``dataset[i]`` drawn
    under :func:`seeded_rng` ``(s)``; a plain int index is passed through unseeded."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | SeededIndex) -> Any:
        if not isinstance(index, SeededIndex):
            return self.dataset[index]
        with seeded_rng(index.seed):
            return self.dataset[index.index]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle, pad to equal shards) that can start mid-epoch.

    Yields :class:`SeededIndex` items. ``skip`` indices of the next epoch are passed over once
    (set by :class:`ResumableLoader` on resume).
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed,
                         drop_last=False)
        self.skip = 0

    def sync_world(self) -> None:
        """Adopt the process group's rank and size (as ``DistributedSampler.__init__`` does)."""
        self.num_replicas, self.rank = _world()
        self.num_samples = math.ceil(len(self.dataset) / self.num_replicas)  # type: ignore[arg-type]
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        self.sync_world()
        return self.num_samples

    def __iter__(self) -> Iterator[SeededIndex]:  # type: ignore[override]
        self.sync_world()
        indices = list(super().__iter__())[self.skip:]
        self.skip = 0
        seed, epoch = self.seed, self.epoch
        return (SeededIndex(i, sample_seed(seed, epoch, i)) for i in indices)


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` with Lightning's ``_Stateful`` protocol.

    ``dataset`` is any map-style dataset; it is wrapped in :class:`SeededDataset` so its random
    augmentations are seeded per sample. State: ``{"epoch": int, "batches": int}``, the epoch
    being read and how many batches of it were handed out.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, seed: int, drop_last: bool,
                 **kwargs: Any) -> None:
        seeded = SeededDataset(dataset)
        super().__init__(seeded, batch_size=batch_size, sampler=ResumableSampler(seeded, seed),
                         drop_last=drop_last, **kwargs)
        self.epoch_batches = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # a generator: the body runs at the first next(), after Lightning's set_epoch()
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        start = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            start = self._resume[1]
        self._resume = None
        sampler.skip = start * int(self.batch_size or 1)
        self.epoch_batches = start
        for batch in super().__iter__():
            self.epoch_batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": int(self.epoch_batches)}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        self._resume = (epoch, batches)


class RestoreLoaderState(pl.Callback):
    """Apply the checkpoint's train-loader states at ``on_train_start`` (see the module doc).

    Calls Lightning's own ``FitLoop._load_combined_loader_states``, a no-op unless resuming with
    states not yet applied.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.fit_loop._load_combined_loader_states()
