"""downstream.compare: several encoders, one task, the same budget, one table."""

from __future__ import annotations

import json

from conftest import draw_identity_folder

from backbone_ssl.backbones import create_backbone
from backbone_ssl.export import export_encoder
from downstream.compare import encoder_label, main


def test_labels_are_short_and_unique():
    taken: set[str] = set()
    assert encoder_label("random:resnet18", taken) == "random-resnet18"
    assert encoder_label("runs/dino/encoder", taken) == "dino"
    assert encoder_label("other/dino/encoder", taken) == "dino-2"
    assert encoder_label("runs/byol/checkpoints/last.ckpt", taken) == "checkpoints"
    assert encoder_label("/x/enc_a", taken) == "enc_a"


def test_compare_siamese_two_encoders(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "ids", identities=8, per_identity=8)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "dino" / "encoder",
                         input_size=32, meta={"method": "dino", "steps": 7})
    code = main(["--task", "siamese", "--encoders", str(enc), "random:resnet10t",
                 "trainer.max_steps=2", "--data", str(root), "--out", str(tmp_path / "cmp"),
                 "data.image_size=32", "data.train_pairs=32", "data.eval_pairs=32",
                 "data.val_fraction=0.25", "data.test_fraction=0.25", "model.hidden_dim=16",
                 "model.embed_dim=8", "trainer.enable_progress_bar=false",
                 "trainer.save_checkpoint=false"])
    assert code == 0
    table = capsys.readouterr().out
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| encoder | method | arch") and "roc_auc ↑" in lines[0]
    assert lines[1].startswith("| dino | dino | resnet10t | 7 | 2 |")
    assert lines[2].startswith("| random-resnet10t | random | resnet10t | 0 | 2 |")
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["dino", "random-resnet10t"]
    assert "trainer.max_steps=2" in saved["overrides"]
    assert (tmp_path / "cmp" / "dino" / "report.json").is_file()
    assert "| dino |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_bad_input_exit_2(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "one", identities=1, per_identity=4)
    code = main(["--task", "siamese", "--encoders", "random:resnet10t", "--data", str(root),
                 "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least 2 identities" in err[0]
