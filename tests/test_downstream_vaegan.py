"""Face VAE-GAN: KL, the Dis_l feature loss, Larsen's per-network gradients, end-to-end runs with
report, grids and resume, and bad input refused with one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.export import export_encoder, resolve_encoder
from downstream.config import VaeganConfig
from downstream.latent import kl_divergence
from downstream.vaegan import VAEGAN, feature_loss

FAST = ["trainer.max_steps=2", "trainer.enable_progress_bar=false", "data.image_size=16",
        "data.batch_size=6", "model.latent_dim=8", "model.gen_channels=8",
        "model.disc_channels=8", "metrics.max_eval=12", "metrics.ref_encoder=random:resnet10t",
        "trainer.log_every_n_steps=1"]


def _model(extra=(), spec="random:resnet10t"):
    cfg = load_config(VaeganConfig, "vaegan", None, [*FAST, "model.diffaugment=none", *extra])
    torch.manual_seed(0)
    return VAEGAN(cfg, resolve_encoder(spec, input_size=16))


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return draw_identity_folder(tmp_path_factory.mktemp("vaegan") / "faces", identities=4,
                                per_identity=6, size=16)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    z = torch.zeros(4, 8)
    assert kl_divergence(z, z).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dim
    assert kl_divergence(torch.ones(4, 8), z).item() == pytest.approx(4.0)
    # the model's KL term is zero when its encoder outputs mu = 0, logvar = 0
    m = _model()
    with torch.no_grad():
        m.encoder.head.weight.zero_()
        m.encoder.head.bias.zero_()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    mu, logvar = m.encoder(x)
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(logvar, torch.zeros_like(mu))
    _, terms = m.encoder_decoder_loss(x)
    assert terms["kl"].item() == 0.0
    with torch.no_grad():
        m.encoder.head.bias[:8] = 1.0  # mu = 1
    assert m.encoder_decoder_loss(x)[1]["kl"].item() == pytest.approx(4.0)


def test_feature_loss_uses_discriminator_features():
    m = _model()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert feature_loss(m.dis, x, x).item() == 0.0
    y = x.clone().requires_grad_(True)
    loss = feature_loss(m.dis, x, (y + 0.5).clamp(-1, 1))
    assert loss.item() > 0
    loss.backward()
    assert y.grad.abs().sum() > 0
    want = (m.dis.features(x) - m.dis.features((x + 0.5).clamp(-1, 1))).pow(2).sum((1, 2, 3))
    assert loss.item() == pytest.approx(want.mean().item(), rel=1e-5)


def _grads(m, x):
    m.zero_grad(set_to_none=True)
    m.encoder_decoder_loss(x)[0].backward()
    enc = m.encoder.head.weight.grad
    dec = m.generator.net[0].weight.grad
    return (0.0 if enc is None else enc.abs().sum().item(),
            0.0 if dec is None else dec.abs().sum().item())


def test_larsen_gradients_adversarial_term_trains_decoder_only():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    only_adv = _model(["loss.kl_weight=0", "loss.rec_weight=0", "loss.gamma=0"])
    enc, dec = _grads(only_adv, x)
    assert enc == 0.0 and dec > 0  # L_GAN does not reach the encoder
    only_rec = _model(["loss.kl_weight=0", "loss.adv_weight=0", "loss.gamma=0"])
    enc, dec = _grads(only_rec, x)
    assert enc > 0  # the encoder learns from the feature reconstruction
    # gamma weights the decoder's share: the decoder gradient scales with gamma, E's does not
    g1 = _model(["loss.kl_weight=0", "loss.adv_weight=0", "loss.gamma=1"])
    g3 = _model(["loss.kl_weight=0", "loss.adv_weight=0", "loss.gamma=3"])
    torch.manual_seed(1)
    e1, d1 = _grads(g1, x)
    torch.manual_seed(1)
    e3, d3 = _grads(g3, x)
    assert e3 == pytest.approx(e1, rel=1e-4) and d3 == pytest.approx(3 * d1, rel=1e-3)


def test_encoder_starts_from_exported_weights(tmp_path):
    net = create_backbone("resnet10t")
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.fill_(0.01 * (i % 5) - 0.01)
    enc_dir = export_encoder(net, "resnet10t", tmp_path / "enc", input_size=16)
    m = _model(spec=str(enc_dir))
    got = m.encoder.features.encoder.state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(got[k], v), k


def test_end_to_end_resume_and_bad_input(faces, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["downstream", "vaegan", "--encoder", "random:resnet10t", "--data", str(faces),
            "--out", str(out)]
    assert main([*base, *FAST]) == 0
    r = json.loads((out / "report.json").read_text())
    m = r["metrics"]
    assert math.isfinite(m["kid"]) and math.isfinite(m["fd"]) and m["fd"] >= 0
    assert math.isfinite(m["rec_l1"]) and m["eval_samples"] == 12
    for name in ("samples.png", "reconstructions.png", "loss.png", "vae.png"):
        assert (out / "plots" / name).stat().st_size > 0, name
    assert r["task"] == "vaegan" and r["budget"]["steps"] == 2
    code = main([*base, "--resume", *FAST, "trainer.max_steps=3"])
    assert code == 0
    r2 = json.loads((out / "report.json").read_text())
    assert r2["resumed"] is True and r2["budget"]["steps"] == 3
    # a latent size that does not match the run's face model: one line, exit 2
    capsys.readouterr()
    code = main([*base, "--resume", *FAST, "model.latent_dim=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.latent_dim=8" in err[0]
    # a run folder of another task (bigan resuming this vaegan run): one line, exit 2
    code = main(["downstream", "bigan", "--encoder", "random:resnet10t", "--data", str(faces),
                 "--out", str(out), "--resume", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "vaegan" in err[0]
    assert json.loads((out / "report.json").read_text()) == r2  # nothing was overwritten
