"""Two-process DDP on CPU (gloo), launched exactly as a user would: the console script.

Lightning's subprocess launcher re-runs the command line for rank 1; the run dir, the sampler
shards, the online kNN monitor and the rank-0-only export must all hold up.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backbone_ssl.export import load_encoder_bundle, read_checkpoint

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1"]


def cli_command() -> list[str]:
    """The installed ``backbone-ssl`` console script, else ``python -m backbone_ssl.cli``."""
    script = Path(sys.executable).parent / "backbone-ssl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "backbone_ssl.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dino", "byol", "identity"])
def test_two_process_ddp_on_cpu(method, tiny_split, tmp_path):
    train, test = tiny_split  # 24 images: 12 per rank, batch 8 per rank -> 1 step per epoch
    run = tmp_path / "run"
    extra = ["dino.local_crop_size=16"] if method == "dino" else []
    cmd = cli_command() + [
        "pretrain", method, "--data", str(train), "--out", str(run),
        "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
        "trainer.max_steps=3", "optim.lr_scaling=linear",
        f"data.val_train={train}", f"data.val_test={test}", *FAST, *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("pretrained") == 2  # both ranks finished the command

    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 3
    # sharded: each rank reads 12 of the 24 images, so each epoch is one step (3 epochs)
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 2, "batches": 1}]
    # optim.lr_scaling=linear doubles the lr for an effective batch of 2 x 8
    base_lr = ckpt["hyper_parameters"]["config"]["optim"]["lr"]
    assert ckpt["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(
        2 * base_lr)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    losses = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in losses] == [0, 1, 2]
    assert [int(r["epoch"]) for r in losses] == [0, 1, 2]
    knn = [float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")]
    assert len(knn) == 3 and all(0.0 <= v <= 1.0 for v in knn)
    enc = load_encoder_bundle(run / "encoder")
    assert enc.meta["steps"] == 3 and enc.meta["method"] == method
    ours = {".backbone-ssl-output.json", ".lock"}  # the --out marker and the run lock's file
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".") and p.name not in ours]
    assert leftovers == [] and (run / "plots" / "loss.png").is_file()


@pytest.fixture()
def tiny_prep(tmp_path):
    """A `golden prepare` output of 6 toy books (person: both classes on each side)."""
    from backbone_ssl.data.golden import prepare
    from backbone_ssl.data.toy_comics import write_toy_comics

    comics = tmp_path / "comics"
    write_toy_comics(comics, books=6, pages=2, seed=0)
    prepare(comics / "raw_panel_images", comics / "face_annotations", tmp_path / "prep")
    return tmp_path / "prep"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["person", "inpaint"])
def test_two_process_ddp_on_cpu_own_training_step(method, tiny_split, tiny_prep, tmp_path):
    """person (supervised, held-out books) and inpaint (manual optimisation: encoder-decoder plus
    two critics, held-out holes) under 2-process gloo DDP: both ranks finish, every step is
    logged once, the held-out metric is logged, the encoder is exported by rank 0."""
    train, _ = tiny_split
    data = tiny_prep if method == "person" else train
    extra = (["inpaint.decoder_width=8", "inpaint.disc_width=8", "inpaint.local_size=16",
              "inpaint.val_fraction=0.25"] if method == "inpaint" else [])
    # inpaint's critic and generator backwards each use one side's parameters (it says so)
    strategy = "ddp_find_unused_parameters_true" if method == "inpaint" else "ddp"
    run = tmp_path / "run"
    cmd = cli_command() + [
        "pretrain", method, "--data", str(data), "--out", str(run),
        "trainer.devices=2", f"trainer.strategy={strategy}", "trainer.accelerator=cpu",
        "trainer.max_steps=3", *FAST, *extra,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("pretrained") == 2  # both ranks finished the command
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2]
    held_out = "val/roc_auc" if method == "person" else "val/hole_psnr"
    assert [r for r in rows if r.get(held_out)], held_out
    enc = load_encoder_bundle(run / "encoder")
    assert enc.meta["steps"] == 3 and enc.meta["method"] == method
