"""Pretraining end to end on tiny data: run dir contract, resume, monitors, bad input."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
from lightly.utils.scheduler import cosine_schedule
from omegaconf import OmegaConf

from backbone_ssl.cli import main
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.monitors import OnlineKNN

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["dino", "byol"])
def test_pretrain_writes_the_run_contract(method, tiny_split, tmp_path):
    train, test = tiny_split
    run = tmp_path / "run"
    extra = ["dino.local_crop_size=16"] if method == "dino" else []
    rc = main(["pretrain", method, "--data", str(train), "--out", str(run),
               "trainer.max_steps=4", f"data.val_train={train}", f"data.val_test={test}",
               *FAST, *extra])
    assert rc == 0
    for rel in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "encoder/config.json",
                "encoder/model.safetensors", "plots/loss.png", "plots/knn.png"):
        assert (run / rel).is_file(), rel
    metrics = rows(run / "metrics.csv")
    losses = [float(r["train/loss"]) for r in metrics if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # one per step
    assert len(set(losses)) == 4  # the loss moves: every step trained on new views
    cfg = OmegaConf.load(run / "config.yaml")
    start, end = cfg[method]["momentum_start"], cfg[method]["momentum_end"]
    assert start < end
    momentum = {int(r["step"]): float(r["train/ema_momentum"]) for r in metrics
                if r.get("train/ema_momentum")}
    assert sorted(momentum) == [0, 1, 2, 3]
    for step, value in momentum.items():  # lightly's cosine schedule from start to end
        assert value == pytest.approx(cosine_schedule(step, 4, start, end), abs=1e-6), step
    enc = load_encoder_bundle(run / "encoder")
    # the last online kNN measurement (end of training) is the exported encoder's kNN
    knn = [float(r["val/knn_top1"]) for r in metrics if r.get("val/knn_top1")]
    stub = SimpleNamespace(backbone=enc.module, device=torch.device("cpu"))
    expected = OnlineKNN(str(train), str(test), image_size=32).measure(stub)["top1"]
    assert knn and knn[-1] == pytest.approx(expected, abs=1e-6)
    assert enc.arch == "resnet10t" and enc.input_size == 32
    assert enc.meta["method"] == method and enc.meta["steps"] == 4
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")  # weights_only=True works
    assert ckpt["global_step"] == 4
    # the exported encoder is the checkpoint's export.network: DINO's teacher, BYOL's online
    prefix = {"dino": "teacher_backbone.", "byol": "backbone."}[method]
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    for k, v in enc.module.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_resume_continues_to_more_steps(tiny_split, tmp_path):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run),
                 "trainer.max_steps=3", *FAST]) == 0
    # a second start without --resume refuses to overwrite
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run), *FAST]) == 2
    assert main(["pretrain", "byol", "--out", str(run), "--resume",
                 "trainer.max_steps=5"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 5
    steps = [int(r["step"]) for r in rows(run / "metrics.csv") if r.get("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # steps 0..4, once each
    assert json.loads((run / "encoder" / "config.json").read_text())["backbone_ssl"]["steps"] == 5


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, tiny_split):
    train, _ = tiny_split
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["pretrain", "dino", "--data", str(tmp_path / "missing")], "not found"),
        (["pretrain", "dino", "--data", str(empty), "--out", str(tmp_path / "r1")], "no images"),
        (["pretrain", "dino", "--data", str(train), "optim.lrr=1"], "did you mean 'optim.lr'"),
        (["pretrain", "dino", "--data", str(train), "data.batch_size=x"], "data.batch_size"),
        (["pretrain", "mae", "--data", str(train)], "unknown method"),
        (["pretrain", "dino", "--out", str(tmp_path / "r2"), "--resume"], "nothing to resume"),
        (["pretrain", "dino"], "no training data"),
        (["pretrain", "dino", "--data", str(train), "optim.name=adam"], "adamw, sgd"),
        (["pretrain", "dino", "--data", str(train), "optim.lr_scaling=cubic"], "lr_scaling"),
        (["pretrain", "byol", "--data", str(train), "--out", str(tmp_path / "r3"),
          "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"], "needs GPUs"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "r3").exists()  # refused before anything was written


def test_undecodable_images_are_skipped_and_counted(tiny_split, tmp_path):
    train, _ = tiny_split
    (train / "id_0" / "broken.jpg").write_bytes(b"not an image at all")
    (train / "id_1" / "empty.png").write_bytes(b"")
    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run),
                 "trainer.max_epochs=1", *FAST, "data.batch_size=26"]) == 0
    last = [r for r in rows(run / "metrics.csv") if r.get("train/skipped_images")][-1]
    assert float(last["train/skipped_images"]) == 2.0


def test_model_weights_start_from_a_local_encoder(tiny_split, tmp_path):
    from backbone_ssl.export import export_encoder, random_encoder

    train, _ = tiny_split
    start = random_encoder("resnet10t", input_size=32, seed=123)
    enc_dir = export_encoder(start.module, "resnet10t", tmp_path / "start", input_size=32)
    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run),
                 "trainer.max_steps=1", "optim.lr=0.0", f"model.weights={enc_dir}", *FAST]) == 0
    after = load_encoder_bundle(run / "encoder").module.state_dict()
    for k, v in start.module.state_dict().items():
        if k.endswith(".weight") and v.ndim == 4:  # conv weights: untouched at lr 0
            torch.testing.assert_close(after[k], v)
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(tmp_path / "r2"),
                 f"model.weights={tmp_path / 'nope.safetensors'}", *FAST]) == 2
