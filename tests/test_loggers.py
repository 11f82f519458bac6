"""``trainer.logger: csv|tensorboard|both``: Lightning's TensorBoard logger beside RUN/metrics.csv,
with the same metric names and values; a bad choice is one line, exit 2."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from backbone_ssl.cli import main

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.max_steps=3",
        "trainer.log_every_n_steps=1"]


def csv_series(path: Path) -> dict[str, dict[int, float]]:
    """``metrics.csv`` -> ``{name: {step: value}}`` (the ``step`` column is the key)."""
    out: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name != "step" and value:
                    out.setdefault(name, {})[int(row["step"])] = float(value)
    return out


def tensorboard_series(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under ``log_dir``: ``{tag: {step: value}}``."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_both_loggers_write_the_same_metric_names_and_values(tiny_split, tmp_path):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
                 "trainer.logger=both"]) == 0
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in run.rglob("*"))
    from_csv = csv_series(run / "metrics.csv")
    from_tb = tensorboard_series(run / "tensorboard")
    assert {"train/loss", "train/acc", "train/lr"} <= set(from_tb)
    assert set(from_tb) == set(from_csv)
    for name, values in from_csv.items():
        assert from_tb[name].keys() == values.keys(), name
        for step, v in values.items():
            assert from_tb[name][step] == pytest.approx(v, rel=1e-6, abs=1e-7), (name, step)
    assert len(from_tb["train/loss"]) == 3


def test_tensorboard_alone_writes_no_metrics_csv(tiny_split, tmp_path):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
                 "trainer.max_steps=1", "trainer.logger=tensorboard"]) == 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "train/loss" in tensorboard_series(run / "tensorboard")
    assert not (run / "metrics.csv").exists()
    assert (run / "encoder" / "model.safetensors").is_file()


def test_csv_is_the_default_and_writes_no_event_files(tiny_split, tmp_path):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
                 "trainer.max_steps=1"]) == 0
    assert (run / "metrics.csv").is_file() and not (run / "tensorboard").exists()


def test_unknown_logger_is_one_line_exit_2(tiny_split, tmp_path, capsys):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run), *FAST,
                 "trainer.logger=wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trainer.logger" in err[0] and "csv, tensorboard, both" in err[0]
    assert not run.exists()
