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
