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
    assert report["pixels"]["size"] == 32
    assert report["encoder"]["method"] == method and report["baseline"]["arch"] == "resnet10t"
    # toy identities are told apart far above chance (1/50) by raw pixels (0.504 in the README)
    # and by any resnet10t, trained 2 steps or not (random init: 0.164): labels, gallery and
    # queries line up
    assert report["pixels"]["knn"]["top1"] > 0.4
    for section in (report["knn"], report["baseline"]["knn"]):
        assert section["top1"] > 0.08 and section["top5"] > section["top1"]
    md = (out / "report.md").read_text()
    assert "Time:" in md and method in md and "raw pixels 32 px" in md
    chars = json.loads((out / "eval_characters" / "report.json").read_text())
    assert chars["num_classes"] >= 2 and {"baseline", "pixels"} <= set(chars)
    assert chars["pixels"]["knn"]["top1"] > 2 / chars["num_classes"]
    # the verdicts say what the numbers say
    for r in (report, chars):
        for key, name in (("pixels", "raw pixels"), ("baseline", "random init")):
            word = "beats" if r["knn"]["top1"] > r[key]["knn"]["top1"] else "does NOT beat"
            assert f"The encoder {word} {name} on kNN top-1: {100 * r['knn']['top1']:.1f}%" in md
    assert "Golden faces by character" in md
    assert (out / method / "encoder" / "model.safetensors").is_file()
