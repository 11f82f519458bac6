"""downstream.compare: several encoders, one task, the same budget, one table."""

from __future__ import annotations

import json

import pytest
import yaml
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


def test_mean_spread_and_task_overrides():
    from downstream.compare import _task_overrides, mean_spread

    assert mean_spread([1.0, 3.0]) == (2.0, 1.0)
    assert mean_spread([None, float("nan")]) == (None, None)
    over = ["data.batch_size=4", "bigan:model.joint_hidden=16", "cloze:model.embed_dim=8"]
    assert _task_overrides("bigan", over) == ["data.batch_size=4", "model.joint_hidden=16"]
    assert _task_overrides("gan", over) == ["data.batch_size=4"]


SUITE_FAST = ["data.batch_size=4", "model.gen_channels=8", "metrics.max_eval=8",
              "metrics.ref_encoder=random:resnet10t", "trainer.enable_progress_bar=false",
              "trainer.save_checkpoint=false", "gan:model.disc_channels=8"]


def test_face_suite_equal_minutes_two_seeds(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "faces", identities=4, per_identity=4, size=16)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "dino" / "encoder",
                         input_size=16, meta={"method": "dino", "steps": 7})
    out = tmp_path / "suite"
    code = main(["--suite", "faces", "--models", "dcgan,introvae", "--minutes", "0.002",
                 "--seeds", "0", "1", "--size", "16", "--latent-dim", "8", "--encoders",
                 "random:resnet10t", str(enc), "--data", str(root), "--out", str(out),
                 *SUITE_FAST])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| model | encoder | seeds | steps | train s | kid ↓ | fd ↓")
    body = [ln.split(" | ") for ln in lines[1:]]
    # DCGAN once (its encoder plays no part), IntroVAE per encoder, each over 2 seeds
    assert [(c[0].lstrip("| "), c[1], c[2]) for c in body] == [
        ("DCGAN", "-", "2"), ("IntroVAE", "random-resnet10t", "2"), ("IntroVAE", "dino", "2")]
    assert all("±" in c[5] and "±" in c[6] for c in body)
    saved = json.loads((out / "compare.json").read_text())
    assert len(saved["runs"]) == 6 and {r["seed"] for r in saved["runs"]} == {0, 1}
    # equal minutes: each run stopped on the clock, long before its step limit
    assert all(r["budget"]["steps"] < 1000 for r in saved["runs"])
    cfg = yaml.safe_load((out / "introvae" / "dino" / "seed1" / "run" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["trainer"]["max_minutes"] == 0.002
    assert "0.002 training minutes" in (out / "compare.md").read_text()


def test_suite_bad_input_exit_2(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "faces", identities=2, per_identity=2, size=16)
    code = main(["--suite", "faces", "--models", "nope", "--minutes", "1", "--encoders",
                 "random:resnet10t", "--data", str(root), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown nope" in err[0]


@pytest.mark.slow
def test_cloze_suite_with_a_face_latent(tmp_path, capsys):
    from test_downstream_cloze import _prep

    prep = _prep(tmp_path, books=3, pages=2)[0]
    out = tmp_path / "suite"
    code = main(["--suite", "cloze", "--models", "autoencoder,face-bigan", "--minutes", "0.002",
                 "--seeds", "0", "1", "--size", "32", "--latent-dim", "8", "--encoders",
                 "random:resnet10t", "--data", str(prep), "--out", str(out), *SUITE_FAST,
                 "cloze:model.embed_dim=8", "cloze:model.hidden_dim=8",
                 "cloze:model.disc_channels=8", "bigan:model.disc_channels=8",
                 "bigan:model.joint_hidden=8"])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ")]
    # header + one row per model (the separator starts "|---")
    assert "psnr ↑" in lines[0] and "ssim ↑" in lines[0] and len(lines) == 3
    assert lines[1].startswith("| CNN-LSTM autoencoder") and "| 2 |" in lines[1]
    assert lines[2].startswith("| face latent: BiGAN") and "| 2 |" in lines[2]
    face = out / "face-bigan" / "random-resnet10t" / "seed1"
    assert (face / "face_model" / "report.json").is_file()
    rep = json.loads((face / "run" / "report.json").read_text())
    assert rep["model"]["face_latent"] == "bigan" and "latent_mse" in rep["metrics"]


def test_face_suite_scores_stylegan_like_dcgan(tmp_path, capsys):
    """The StyleGAN row runs once per seed (no encoder of its own) and is scored in the same
    reference space, with the same sample counts, as the DCGAN row."""
    root = draw_identity_folder(tmp_path / "faces", identities=4, per_identity=4, size=16)
    out = tmp_path / "suite"
    code = main(["--suite", "faces", "--models", "dcgan,stylegan", "--minutes", "0.002",
                 "--seeds", "0", "--size", "16", "--latent-dim", "8", "--encoders",
                 "random:resnet10t", "--data", str(root), "--out", str(out),
                 "data.batch_size=4", "metrics.max_eval=8", "metrics.ref_encoder=random:resnet18",
                 "trainer.enable_progress_bar=false", "trainer.save_checkpoint=false",
                 "gan:model.gen_channels=8", "gan:model.disc_channels=8",
                 "stylegan:model.channels=8"])
    assert code == 0
    runs = json.loads((out / "compare.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["dcgan", "stylegan"]
    dc, sg = (r["metrics"] for r in runs)
    assert {r["reference"]["encoder"] for r in runs} == {"random:resnet18"}
    assert dc["eval_samples"] == sg["eval_samples"] == 8
    # the same real faces and the same reference: the real-vs-real floor is identical
    assert sg["fd_real"] == pytest.approx(dc["fd_real"]) and "coverage" in sg
    cfg = yaml.safe_load((out / "stylegan" / "none" / "seed0" / "run" / "config.yaml").read_text())
    assert cfg["model"]["z_dim"] == cfg["model"]["w_dim"] == 8


FAST_TASK = ["trainer.max_steps=2", "data.image_size=16", "data.batch_size=4",
             "model.latent_dim=8", "model.gen_channels=8", "model.disc_channels=8",
             "model.encoder_in_discriminator=false", "metrics.max_eval=8",
             "metrics.ref_encoder=random:resnet10t", "trainer.enable_progress_bar=false",
             "trainer.save_checkpoint=false"]


def test_out_folder_this_command_did_not_write_is_refused(tmp_path, capsys):
    """A user's folder (here holding their own compare.md) is never written into: one line,
    exit 2, the file untouched; the same command may rerun into its own output."""
    root = draw_identity_folder(tmp_path / "faces", identities=4, per_identity=4, size=16)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "compare.md").write_text("my notes")
    argv = ["--task", "gan", "--encoders", "random:resnet10t", "--data", str(root), "--out"]
    code = main([*argv, str(theirs), *FAST_TASK])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not an output of" in err[0]
    assert (theirs / "compare.md").read_text() == "my notes"
    mine = tmp_path / "mine"
    assert main([*argv, str(mine), *FAST_TASK]) == 0
    assert main([*argv, str(mine), *FAST_TASK]) == 0
