"""Hyper-parameter search on toy data: outputs, resume, grid, pruning, bad spaces."""

from __future__ import annotations

import csv
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.errors import UserError
from backbone_ssl.methods.byol import BYOLConfig
from backbone_ssl.search import PruningReporter, as_override, resolve_val_split, run_search

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1",
        "trainer.max_steps=2"]


def read_trials(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_random_search_writes_outputs_and_resumes(tiny_split, tmp_path):
    train, _ = tiny_split
    draw_identity_folder(tmp_path / "val", per_identity=3, seed=2)  # the objective's sibling val/
    out = tmp_path / "search"
    res = run_search("byol", trials=2, sampler="random", data=str(train), out=str(out),
                     overrides=FAST)
    rows = read_trials(out / "trials.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    values = [float(r["val/knn_top1"]) for r in rows]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert res["best_value"] == max(values) and res["complete"] == 2
    lrs = [float(r["optim.lr"]) for r in rows]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
    for key in ("optim_lr", "byol_min_scale", "byol_momentum_start"):
        assert (out / "plots" / f"objective_vs_{key}.png").stat().st_size > 1000
    # best.yaml is a full config carrying the best trial's values
    best = load_config(BYOLConfig, "byol", out / "best.yaml")
    assert best.optim.lr == pytest.approx(res["best_params"]["optim.lr"])
    assert best.byol.min_scale == res["best_params"]["byol.min_scale"]
    # ... but not the search's step budget: trainer.max_epochs sets a full run's length
    assert best.data.path == str(train) and best.trainer.max_steps == -1
    assert "best val/knn_top1=" in res["summary"]
    # resumable: the same study continues, finished trials are not redone
    first = (out / "trial_0" / "encoder" / "model.safetensors").stat().st_mtime_ns
    res = run_search("byol", trials=3, sampler="random", data=str(train), out=str(out),
                     overrides=FAST)
    assert [int(r["number"]) for r in read_trials(out / "trials.csv")] == [0, 1, 2]
    assert (out / "trial_0" / "encoder" / "model.safetensors").stat().st_mtime_ns == first
    assert res["complete"] == 3
    # best.yaml goes straight into pretrain
    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--config", str(out / "best.yaml"), "--out", str(run),
                 "trainer.max_steps=1"]) == 0
    assert (run / "encoder" / "model.safetensors").is_file()


def test_grid_search_visits_the_grid_once_via_the_cli(tiny_split, tmp_path, capsys):
    train, test = tiny_split
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, "
                     "grid: [5.0e-4, 2.0e-3]}\nfixed: {trainer.max_epochs: 1}\n")
    out = tmp_path / "grid"
    assert main(["search", "byol", "--trials", "5", "--sampler", "grid", "--space", str(space),
                 "--data", str(train), "--out", str(out), f"data.val_train={train}",
                 f"data.val_test={test}", *FAST]) == 0
    assert "2 complete" in capsys.readouterr().out
    rows = read_trials(out / "trials.csv")
    assert sorted(float(r["optim.lr"]) for r in rows) == [5e-4, 2e-3]
    assert (out / "best.yaml").is_file() and (out / "plots" / "objective_vs_optim_lr.png").is_file()


def test_bad_spaces_and_missing_split_are_user_errors(tiny_split, tmp_path):
    train, test = tiny_split
    val = [f"data.val_train={train}", f"data.val_test={test}"]
    cases = [
        ("params:\n  optim.lrr: {type: float, low: 0.1, high: 1.0}\n",
         "random", r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"),
        ("optim.lr: {type: float, low: 0.1, high: 1.0}\n", "grid", "needs one"),
        ("params:\n  optim.lr: {type: gauss}\n", "random", "needs type"),
        ("params:\n  byol.min_scale: {type: categorical}\n", "random", "needs choices"),
        ("params:\n  optim.lr: {type: float, low: 1.0, high: 0.1}\n", "random", "low <= high"),
        ("params: {optim.lr: {type: float, low: 0.1, high: 1}}\npruner: hyperband\n", "random",
         "pruner must be"),
    ]
    for text, sampler, match in cases:
        space = tmp_path / "space.yaml"
        space.write_text(text)
        with pytest.raises(UserError, match=match):
            run_search("byol", trials=1, sampler=sampler, space=str(space), data=str(train),
                       out=str(tmp_path / "s"), overrides=val)
    flat = tmp_path / "other" / "flat"  # no sibling test/ folder
    (flat / "a").mkdir(parents=True)
    (flat / "a" / "x.png").write_bytes((train / "id_0" / "img_0.png").read_bytes())
    with pytest.raises(UserError, match="labelled validation split"):
        run_search("byol", trials=1, sampler="random", data=str(flat), out=str(tmp_path / "s"))
    with pytest.raises(UserError, match="search space file not found"):
        run_search("byol", trials=1, sampler="random", space=str(tmp_path / "nope.yaml"),
                   data=str(train), out=str(tmp_path / "s"), overrides=val)


def test_search_takes_a_sibling_val_folder_and_never_test(tmp_path):
    root = tmp_path / "split"
    for part in ("train", "test"):
        (root / part / "a").mkdir(parents=True)
    with pytest.raises(UserError, match="never the test split"):  # test alone is not enough
        resolve_val_split(str(root / "train"), [])
    (root / "val" / "a").mkdir(parents=True)
    assert resolve_val_split(str(root / "train"), []) == [
        f"data.val_train={root / 'train'}", f"data.val_test={root / 'val'}"]
    explicit = ["data.val_train=g", "data.val_test=q"]
    assert resolve_val_split(str(root / "train"), explicit) == []


def test_pruning_reporter_reports_each_epoch_and_prunes():
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=0.6))
    trial = study.ask()
    reporter = PruningReporter(trial)
    trainer = SimpleNamespace(callback_metrics={"val/knn_top1": torch.tensor(0.75)},
                              current_epoch=0)
    reporter.on_train_epoch_end(trainer, None)  # above the threshold: continues
    reporter.on_train_epoch_end(trainer, None)  # same epoch again: reported once
    trainer.callback_metrics["val/knn_top1"] = torch.tensor(0.5)
    trainer.current_epoch = 1
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        reporter.on_train_epoch_end(trainer, None)
    assert study.trials[0].intermediate_values == {0: 0.75, 1: 0.5}


def test_overrides_round_trip_through_the_config():
    cfg = load_config(BYOLConfig, "byol", overrides=[
        as_override("optim.lr", 1.2345678901234e-4), as_override("byol.min_scale", 0.2),
        as_override("trainer.deterministic", True), as_override("data.max_images", None),
        as_override("model.arch", "resnet10t")])
    assert cfg.optim.lr == 1.2345678901234e-4 and cfg.byol.min_scale == 0.2
    assert cfg.trainer.deterministic is True and cfg.data.max_images is None
    assert cfg.model.arch == "resnet10t"
