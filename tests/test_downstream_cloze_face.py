"""Cloze with a separate face encoding (model.face_latent=bigan|vae), the StyleGAN decoder
(model.decoder=stylegan) and the autoencoder preset (configs/cloze_autoencoder.yaml)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from test_downstream_cloze import FAST, _prep

from backbone_ssl.cli import main
from backbone_ssl.config import CONFIG_DIR
from downstream import run_downstream
from downstream.face_model import StyleDecoder
from downstream.stylegan import StyleGenerator

FACE_FAST = ["trainer.max_steps=1", "trainer.enable_progress_bar=false", "data.image_size=32",
             "data.batch_size=4", "model.latent_dim=8", "model.gen_channels=8",
             "metrics.max_eval=8", "metrics.ref_encoder=random:resnet10t"]


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return _prep(tmp_path_factory.mktemp("cloze_face"), books=3, pages=2)[0]


@pytest.fixture(scope="module")
def bigan_run(prep, tmp_path_factory):
    out = tmp_path_factory.mktemp("face_models") / "bigan"
    run_downstream("bigan", encoder="random:resnet10t", data=str(prep), out=str(out),
                   overrides=[*FACE_FAST, "model.disc_channels=8", "model.joint_hidden=16"])
    return out


def _cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_face_latent_bigan_predicts_and_decodes_with_the_face_model(prep, bigan_run, tmp_path):
    out = tmp_path / "cloze"
    r = run_downstream("cloze", encoder="random:resnet10t", data=str(prep), out=str(out),
                       overrides=[*FAST, "model.face_latent=bigan",
                                  f"model.face_model={bigan_run}", "trainer.save_checkpoint=true"])
    m = r["metrics"]
    assert math.isfinite(m["latent_mse"]) and m["latent_mse"] > 0
    assert math.isfinite(m["kid"]) and math.isfinite(m["psnr"])
    assert r["model"]["face_latent"] == "bigan" and r["model"]["face_model"]["task"] == "bigan"
    with (out / "metrics.csv").open() as f:
        latent = [float(row["train/latent"]) for row in csv.DictReader(f) if row["train/latent"]]
    assert latent and all(v > 0 for v in latent)  # the latent-matching term is trained
    assert (out / "plots" / "latent.png").is_file()
    # the face model's generator decodes (frozen: its weights are the BiGAN's, unchanged) and
    # its encoder gives the target latent
    face = torch.load(bigan_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    cloze = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    g = {k[len("generator.module."):]: v for k, v in cloze.items()
         if k.startswith("generator.module.")}
    want = {k[len("generator."):]: v for k, v in face.items() if k.startswith("generator.")}
    assert g.keys() == want.keys() and all(torch.equal(g[k], want[k]) for k in want)
    e = {k[len("face_target.module.encoder."):]: v for k, v in cloze.items()
         if k.startswith("face_target.module.encoder.")}
    assert e and all(torch.equal(v, face["encoder." + k]) for k, v in e.items())


def test_face_latent_bad_input_one_line_exit_2(prep, bigan_run, tmp_path, capsys):
    base = ["downstream", "cloze", "--encoder", "random:resnet10t", "--data", str(prep),
            "--out", str(tmp_path / "bad"), *FAST]
    # a face latent size that does not match the face model
    code, err = _cli([*base, "model.face_latent=bigan", f"model.face_model={bigan_run}",
                      "model.latent_dim=16"], capsys)
    assert code == 2 and len(err) == 1 and "face latent size" in err[0]
    assert "model.latent_dim=8" in err[0]
    # a face-model run folder from another task (a BiGAN run where a VAE is asked for)
    code, err = _cli([*base, "model.face_latent=vae", f"model.face_model={bigan_run}"], capsys)
    assert code == 2 and len(err) == 1 and "is a 'bigan' run" in err[0] and "vaegan" in err[0]
    # ... and a cloze run folder as the face model
    cloze_cfg = tmp_path / "cloze_run"
    (cloze_cfg / "checkpoints").mkdir(parents=True)
    (cloze_cfg / "config.yaml").write_text("task: cloze\n")
    (cloze_cfg / "checkpoints" / "last.ckpt").write_bytes(b"")
    code, err = _cli([*base, "model.face_latent=bigan", f"model.face_model={cloze_cfg}"], capsys)
    assert code == 2 and len(err) == 1 and "is a 'cloze' run" in err[0]
    # a face model at another face size
    code, err = _cli([*base, "model.face_latent=bigan", f"model.face_model={bigan_run}",
                      "data.face_size=16"], capsys)
    assert code == 2 and len(err) == 1 and "data.face_size=32" in err[0]
    # a face latent without a face model, or a face model with nothing to use it
    code, err = _cli([*base, "model.face_latent=bigan"], capsys)
    assert code == 2 and len(err) == 1 and "needs model.face_model" in err[0]
    code, err = _cli([*base, f"model.face_model={bigan_run}"], capsys)
    assert code == 2 and len(err) == 1 and "model.face_latent=bigan|vae" in err[0]
    assert not (tmp_path / "bad" / "report.json").exists()


def test_style_decoder_maps_the_latent_into_w():
    torch.manual_seed(0)
    dec = StyleDecoder(StyleGenerator(16, z_dim=8, w_dim=8, mapping_layers=1, channels=8))
    z = torch.randn(2, 8, requires_grad=True)
    dec.eval()
    out = dec(z)
    assert out.shape == (2, 3, 16, 16)
    assert torch.equal(out, dec(z))  # no noise in eval
    out.sum().backward()
    assert z.grad.abs().sum() > 0  # the sequence latent drives the generator through W
    with torch.no_grad():
        ws = dec.net.mix(z)
        assert torch.allclose(ws[:, 0], ws[:, -1])  # one w for every layer (W, not W+)
        assert not torch.equal(dec(z), dec(z.flip(0)))
    dec.train()
    with torch.no_grad():
        for layer in dec.net.layers:
            layer.noise_strength.fill_(0.5)  # (learned; 0 at init)
        assert not torch.equal(dec(z), dec(z))  # per-layer noise while training


def test_stylegan_decoder_end_to_end(prep, tmp_path):
    out = tmp_path / "sg"
    r = run_downstream("cloze", encoder="random:resnet10t", data=str(prep), out=str(out),
                       overrides=[*FAST, "model.decoder=stylegan", "model.style_w_dim=8",
                                  "model.style_channels=8", "model.style_mapping_layers=1"])
    assert r["model"]["decoder"] == "stylegan" and "latent_mse" not in r["metrics"]
    for key in ("psnr", "ssim", "kid", "fd"):
        assert math.isfinite(r["metrics"][key]), key
    assert "StyleGAN2" in (out / "report.md").read_text()
    assert (out / "plots" / "samples.png").is_file()


def test_autoencoder_preset_trains_no_critic(prep, tmp_path, capsys):
    preset = CONFIG_DIR / "cloze_autoencoder.yaml"
    out = tmp_path / "ae"
    code = main(["downstream", "cloze", "--config", str(preset), "--encoder",
                 "random:resnet10t", "--data", str(prep), "--out", str(out), *FAST])
    assert code == 0
    r = json.loads((out / "report.json").read_text())
    assert r["model"]["vae"] is False
    assert r["budget"]["steps"] == 3 and r["budget"]["optimizer_steps"] == 3  # G steps only
    with (out / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["train/d_loss"]]
    assert rows and all(float(row["train/d_loss"]) == 0.0 for row in rows)
    assert all(float(row["train/kl"]) == 0.0 for row in rows)
