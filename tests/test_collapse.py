"""Collapse monitor: the rules, the one warning, metrics.csv, the export block, stop_on_collapse."""

from __future__ import annotations

import csv
import logging
import math

import pytest
import torch

from backbone_ssl import monitors
from backbone_ssl.cli import main
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.monitors import healthy_std, loss_collapsed, std_collapsed

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1",
        "dino.local_crop_size=16", "dino.hidden_dim=64", "dino.bottleneck_dim=32"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rules_fire_on_a_flat_loss_at_the_collapse_value_and_on_a_low_std():
    log_k = math.log(2048)
    assert loss_collapsed([7.0, log_k + 0.01, log_k - 0.02, log_k], log_k)
    assert not loss_collapsed([log_k, log_k, 7.3], log_k)  # fell clearly below
    assert not loss_collapsed([log_k, log_k], log_k)  # too few points
    assert not loss_collapsed([log_k] * 5, None)  # no collapse value declared
    assert loss_collapsed([-0.999, -0.998, -1.0], -1.0)  # BYOL: a constant output
    assert not loss_collapsed([-0.95, -0.97, -0.96], -1.0)
    assert healthy_std(512) == pytest.approx(1 / math.sqrt(512))
    assert std_collapsed(0.01, 512) and not std_collapsed(0.02, 512)  # threshold 0.0147


def test_methods_declare_their_collapse_value(tiny_split):
    from backbone_ssl.config import load_config
    from backbone_ssl.methods import get_method

    dino_cls, byol_cls = get_method("dino"), get_method("byol")
    dino = dino_cls(load_config(dino_cls.config_cls, "dino",
                                overrides=["model.arch=resnet10t", "dino.output_dim=300"]))
    assert dino.collapse_value() == pytest.approx(math.log(300))
    byol = byol_cls(load_config(byol_cls.config_cls, "byol", overrides=["model.arch=resnet10t"]))
    assert byol.collapse_value() == -1.0
    # DINO: a teacher output equal to its centre is uniform -> entropy log K, KL = loss - log K
    k = 300
    dino._collapse_state = (torch.zeros(2, 4, k), torch.zeros(1, 1, k), 0.04,
                            torch.tensor(math.log(k) + 0.5))
    sig = dino.collapse_signals()
    assert float(sig["train/teacher_entropy"]) == pytest.approx(math.log(k), rel=1e-5)
    assert float(sig["train/teacher_student_kl"]) == pytest.approx(0.5, abs=1e-4)
    # a one-hot teacher has entropy ~0
    one_hot = torch.full((2, 4, k), -10.0)
    one_hot[..., 0] = 10.0
    dino._collapse_state = (one_hot, torch.zeros(1, 1, k), 0.04, torch.tensor(0.1))
    assert float(dino.collapse_signals()["train/teacher_entropy"]) < 1e-3


def test_collapsing_dino_warns_once_is_recorded_and_stop_keeps_last_good_checkpoint(
        tiny_split, tmp_path, caplog):
    """Teacher temperature = student temperature and no centring (centre momentum 1: the centre
    stays 0): DINO's two anti-collapse terms removed. The std rule is tightened for the test so
    the collapse shows within a few CPU steps; the plumbing is the real one."""
    train, _ = tiny_split
    run = tmp_path / "run"
    collapse = ["dino.teacher_temp=0.1", "dino.warmup_teacher_temp=0.1",
                "dino.center_momentum=1.0"]
    # any std counts as collapsed: fires at the first logging step after warm-up
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(monitors, "STD_COLLAPSE_FRACTION", 1e9)
        with caplog.at_level(logging.WARNING):
            rc = main(["pretrain", "dino", "--data", str(train), "--out", str(run),
                       "trainer.max_steps=20", "trainer.checkpoint_every_n_steps=1",
                       "trainer.stop_on_collapse=true", "optim.warmup_fraction=0.2",
                       *FAST, *collapse])
    assert rc == 0
    warnings = [r.getMessage() for r in caplog.records if "collapse at step" in r.getMessage()]
    assert len(warnings) == 1 and "feature std" in warnings[0] and "try " in warnings[0]
    metrics = rows(run / "metrics.csv")
    flags = [(int(r["step"]), float(r["train/collapsed"])) for r in metrics
             if r.get("train/collapsed")]
    fired = [s for s, v in flags if v == 1.0]
    assert fired and min(fired) > 0 and any(v == 0.0 for _, v in flags)
    enc = load_encoder_bundle(run / "encoder")
    assert enc.meta["collapsed"] is True and enc.meta["collapse_signal"] == "std"
    stopped_at = enc.meta["steps"]
    assert stopped_at < 20  # the run ended at the collapse, not at max_steps
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] < stopped_at  # the checkpoint from before the collapse
    for col in ("train/teacher_entropy", "train/teacher_student_kl", "train/collapse_std",
                "train/collapse_std_healthy", "train/loss_collapse_value"):
        assert any(r.get(col) for r in metrics), col


def test_default_dino_does_not_fire_on_tiny_data(tiny_split, tmp_path, caplog):
    train, _ = tiny_split
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", "dino", "--data", str(train), "--out", str(run),
                     "trainer.max_steps=12", *FAST]) == 0
    assert not [r for r in caplog.records if "collapse at step" in r.getMessage()]
    metrics = rows(run / "metrics.csv")
    assert all(float(r["train/collapsed"]) == 0.0 for r in metrics if r.get("train/collapsed"))
    assert load_encoder_bundle(run / "encoder").meta["collapsed"] is False
