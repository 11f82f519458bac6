"""backbone_ssl.compare: the per-method budget (FLOPs of one training step, wall-clock stop)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from backbone_ssl.backbones import create_backbone
from backbone_ssl.compare import Budget, TotalFlopCounter, pretrain_one

COMMON = ["model.arch=resnet10t", "data.image_size=32", "data.batch_size=8",
          "trainer.max_steps=2", "trainer.max_epochs=-1", "data.num_workers=0",
          "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def backbone_forward_flops(batch: int = 8, size: int = 32) -> int:
    """FLOPs of one resnet10t forward pass over ``[batch,3,size,size]``."""
    with torch.no_grad(), TotalFlopCounter() as counter:
        create_backbone("resnet10t")(torch.zeros(batch, 3, size, size))
    return counter.get_total_flops()


def test_budget_counts_flops_of_a_supervised_and_an_ssl_step(tiny_split, tmp_path):
    """identity (ArcFace accuracy under no_grad: the module tracker used to raise there) and BYOL
    both report FLOPs of a whole step: at least the backbone's forward plus its backward."""
    train, _ = tiny_split
    fwd = backbone_forward_flops()
    assert fwd > 0
    flops = {}
    for method in ("identity", "byol"):
        run = pretrain_one(method, train, tmp_path / method, COMMON)
        assert run["steps"] == 2
        flops[method] = run["flops_per_step"]
        assert not _get_current_dispatch_mode_stack(), "the counting mode outlived the step"
    # forward + backward (grads of weights and activations) of the backbone: ~3x its forward
    assert flops["identity"] > 2.5 * fwd, (flops, fwd)
    # BYOL: two views through the online network (forward + backward) and the target network
    assert flops["byol"] > 2 * 2.5 * fwd, (flops, fwd)


def test_budget_leaves_no_counting_mode_behind_when_a_step_raises():
    budget = Budget()
    budget.on_train_batch_start(None, None, None, 0)
    assert _get_current_dispatch_mode_stack()
    budget.on_exception(None, None, RuntimeError("step failed"))
    assert not _get_current_dispatch_mode_stack()
    assert budget.flops_per_step is None


def test_minutes_budget_sizes_the_schedule_so_warm_up_and_decay_fit(tiny_split, tmp_path):
    """--minutes: a timed probe turns the budget into a step count, and the lr schedule is built
    for it: the run ends in the cosine decay, not in warm-up (the bug: a schedule sized for a
    huge --steps left every method at lr ~ 0 for its whole minute)."""
    import csv

    train, _ = tiny_split
    common = [c for c in COMMON if not c.startswith("trainer.max_steps")]
    run = pretrain_one("simclr", train, tmp_path / "run", common, minutes=0.1,
                       max_steps=100_000)
    per_step = run["probe_seconds_per_step"]
    assert per_step > 0
    assert run["planned_steps"] == max(1, int(60 * 0.1 / per_step))
    assert 1 <= run["steps"] <= run["planned_steps"] < 100_000
    assert not (tmp_path / "run.probe").exists(), "the probe run is removed after timing"
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        lrs = [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]
    peak = max(lrs)
    assert peak > 0.5e-3, "warm-up reached the configured peak lr (1e-3)"
    assert lrs[-1] < 0.5 * peak, f"the run ended in warm-up or at the peak: {lrs[-3:]}"


def test_step_timer_needs_steps_after_skip_and_refuses_foreign_run_dirs(tmp_path):
    import pytest

    from backbone_ssl.compare import StepTimer, replace_run_dir
    from backbone_ssl.errors import UserError

    timer = StepTimer(skip=1)
    timer.ends = [0.0, 10.0, 10.5, 11.0, 11.5, 13.5, 14.0]
    assert timer.seconds_per_step == 0.8  # the first (slow) step is skipped, an epoch stall kept
    timer.ends = [0.0, 1.0]
    with pytest.raises(ValueError):
        _ = timer.seconds_per_step
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a backbone-ssl pretrain run"):
        replace_run_dir(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_seeds_are_aggregated_into_mean_and_std_per_method():
    import argparse

    import pytest

    from backbone_ssl.compare import aggregate_rows, format_markdown

    def row(method, seed, knn, chars, steps):
        return {"method": method, "seed": seed, "config": f"{method}.yaml", "data": "toy",
                "steps": steps, "planned_steps": steps, "images": 64 * steps,
                "seconds": 10.0 + seed, "flops_per_step": 2e9, "knn_top1": knn,
                "linear_top1": knn + 0.1, "chars_top1": chars, "own": "–"}

    per_seed = [[row("simclr", 0, 0.60, 0.30, 100), row("dino", 0, 0.30, None, 90)],
                [row("simclr", 1, 0.70, 0.40, 110), row("dino", 1, 0.40, None, 92)],
                [row("simclr", 2, 0.65, 0.35, 120), row("dino", 2, 0.35, None, 94)]]
    simclr, dino = aggregate_rows(per_seed)
    assert simclr["seeds"] == [0, 1, 2]
    assert simclr["knn_top1"] == pytest.approx(0.65)
    assert simclr["knn_top1_std"] == pytest.approx(0.05)  # sample std of 0.60, 0.70, 0.65
    assert simclr["knn_top1_all"] == [0.60, 0.70, 0.65]
    assert simclr["steps"] == 110 and simclr["seconds"] == pytest.approx(11.0)
    assert dino["chars_top1"] is None  # no seed had it: stays missing, not 0
    args = argparse.Namespace(minutes=2.0, steps=1000, recipes="cpu", batch_size=64,
                              arch="resnet10t", image_size=32, seed=0, seeds=[0, 1, 2])
    text = format_markdown([simclr, dino], args, {"num_classes": 5, "n_train": 50,
                                                  "n_test": 25})
    assert "| 65.0 ± 5.0 | 75.0 ± 5.0 | 35.0 ± 5.0 |" in text
    assert "training seeds 0, 1, 2" in text and "mean ± std" in text
    with pytest.raises(ValueError, match="different methods"):
        aggregate_rows([[row("simclr", 0, 0.6, 0.3, 1)], [row("dino", 1, 0.3, 0.3, 1)]])


def test_compare_refuses_a_seed_given_twice(tmp_path, capsys):
    from backbone_ssl.compare import main

    assert main(["--out", str(tmp_path / "c"), "--seeds", "0", "0"]) == 2
    assert "--seeds: each seed once" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything was written
