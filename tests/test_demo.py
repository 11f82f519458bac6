"""The demo command end to end on a tiny budget (the full recipe is measured in the README)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from backbone_ssl.cli import main
from backbone_ssl.config import default_config_file


@pytest.mark.slow
def test_demo_writes_report_with_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    method = str(OmegaConf.load(default_config_file("demo")).method)
    rc = main(["demo", "--out", str(out), "trainer.max_steps=2", "model.arch=resnet10t",
               "data.num_workers=0", "trainer.enable_progress_bar=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "kNN top-1" in printed
    report = json.loads((out / "eval" / "report.json").read_text())
    # 40 images per identity: 20 train, 10 val (the monitor's), 10 test (reported)
    assert report["n_train"] == 1000 and report["n_test"] == 500 and report["num_classes"] == 50
    assert 0.0 <= report["pixels"]["knn"]["top1"] <= 1.0 and report["pixels"]["size"] == 32
    assert report["encoder"]["method"] == method and report["baseline"]["arch"] == "resnet10t"
    for section in (report["knn"], report["baseline"]["knn"]):
        assert 0.0 <= section["top1"] <= section["top5"] <= 1.0
    md = (out / "report.md").read_text()
    assert "Time:" in md and method in md and "raw pixels 32 px" in md
    assert "beat raw pixels on kNN top-1" in md or "beats raw pixels on kNN top-1" in md
    chars = json.loads((out / "eval_characters" / "report.json").read_text())
    assert chars["num_classes"] >= 2 and {"baseline", "pixels"} <= set(chars)
    assert "Golden faces by character" in md
    assert (out / method / "encoder" / "model.safetensors").is_file()
