"""The non-finite-loss guard: checked on the device every step, read back only at logging steps,
before each checkpoint and at the end; the run stops naming the first bad step and keeps the last
good checkpoint (methods/support.py FiniteLossGuard, methods/base.py PretrainMethod)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from backbone_ssl.cli import main
from backbone_ssl.export import read_checkpoint
from backbone_ssl.methods.identity import Identity
from backbone_ssl.methods.support import FiniteLossGuard, NonFiniteLossError

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8"]


class RecordOps(TorchDispatchMode):
    """Records the name of every aten op run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_observe_reads_nothing_back_and_check_names_the_first_bad_step():
    guard = FiniteLossGuard()
    losses = [torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(float("nan")),
              torch.tensor(2.0)]
    with RecordOps() as rec:
        for step, loss in enumerate(losses):
            guard.observe(loss * 1.0, step)
            guard.observe(torch.tensor([0.5, float("-inf")]) if step == 2 else loss, step,
                          "discriminator loss")
    # .item(), bool(tensor), python indexing with a tensor: all dispatch _local_scalar_dense
    assert not [op for op in rec.ops if "_local_scalar_dense" in op], rec.ops
    with pytest.raises(NonFiniteLossError, match=r"non-finite discriminator loss \(inf\) at "
                                                 r"step 1;.*last checkpoint is kept"):
        guard.check()
    guard.reset()
    guard.observe(torch.tensor(3.0), 7)
    guard.check()  # all finite: nothing raised
    guard.observe(torch.tensor([1.0, float("-inf")]), 8, "generator loss")
    with pytest.raises(NonFiniteLossError, match=r"generator loss \(-inf\) at step 8"):
        guard.check()


def test_check_takes_the_earliest_step_over_processes():
    guard = FiniteLossGuard()
    guard.observe(torch.tensor(float("nan")), 9)
    with pytest.raises(NonFiniteLossError, match=r"\(nan\) at step 9"):
        guard.check(lambda t: t)
    # another process saw a non-finite loss first: every process names that step
    with pytest.raises(NonFiniteLossError, match=r"loss \(on another process\) at step 4"):
        guard.check(lambda t: torch.minimum(t, torch.full_like(t, 4)))


def test_inf_loss_stops_a_supervised_run_at_the_next_check_and_keeps_the_good_checkpoint(
        tiny_split, tmp_path, monkeypatch, capsys):
    """identity: the loss turns inf at step 3; logging every 5 steps, checkpoints every 2: the
    checkpoint at step 4 is refused (the guard is read first), last.ckpt stays at step 2."""
    train, _ = tiny_split
    real_step = Identity.supervised_step

    def diverging(self, x, y):
        loss, acc = real_step(self, x, y)
        return (loss * float("inf") if self.global_step >= 3 else loss), acc

    monkeypatch.setattr(Identity, "supervised_step", diverging)
    run = tmp_path / "run"
    rc = main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
               "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=2",
               "trainer.log_every_n_steps=5"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss (inf) at step 3" in err[0], err
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())
    assert not (run / "encoder").exists()


def test_a_bad_last_step_is_caught_at_the_end_of_training(tiny_split, tmp_path, monkeypatch,
                                                           capsys):
    """The last step's loss is NaN, after the last logging step and checkpoint: the end-of-fit
    check stops the run before the final checkpoint and the export."""
    train, _ = tiny_split
    real_step = Identity.supervised_step

    def last_bad(self, x, y):
        loss, acc = real_step(self, x, y)
        return (loss * float("nan") if self.global_step == 4 else loss), acc

    monkeypatch.setattr(Identity, "supervised_step", last_bad)
    run = tmp_path / "run"
    rc = main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
               "trainer.max_steps=5", "trainer.checkpoint_every_n_steps=4",
               "trainer.log_every_n_steps=4"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss (nan) at step 4" in err[0], err
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (run / "encoder").exists()
