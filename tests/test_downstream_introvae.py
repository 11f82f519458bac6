"""Face IntroVAE: the encoder's hinge and stop-gradients of eq. 11-12, E frozen in G's step,
end-to-end run with report, grids, curves and resume, and bad input refused with one line."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.export import resolve_encoder
from backbone_ssl.nn.training import generator_step
from downstream.config import IntrovaeConfig
from downstream.introvae import IntroVAE, reconstruction_loss

FAST = ["trainer.max_steps=2", "trainer.enable_progress_bar=false", "data.image_size=16",
        "data.batch_size=6", "model.latent_dim=8", "model.gen_channels=8",
        "metrics.max_eval=12", "metrics.ref_encoder=random:resnet10t",
        "trainer.log_every_n_steps=1", "loss.margin=8"]


def _model(extra=()):
    cfg = load_config(IntrovaeConfig, "introvae", None, [*FAST, *extra])
    torch.manual_seed(0)
    return IntroVAE(cfg, resolve_encoder("random:resnet10t", input_size=16)).eval()


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return draw_identity_folder(tmp_path_factory.mktemp("introvae") / "faces", identities=4,
                                per_identity=6, size=16)


def _grad_sum(module):
    return sum(0.0 if p.grad is None else p.grad.abs().sum().item()
               for p in module.parameters())


def test_reconstruction_loss_is_half_the_per_sample_sse():
    x = torch.zeros(2, 3, 4, 4)
    assert reconstruction_loss(x + 1, x).item() == pytest.approx(0.5 * 48)


def test_encoder_hinge_vanishes_beyond_the_margin():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    z_p = torch.randn(4, 8)
    m0 = _model(["loss.margin=0"])
    torch.manual_seed(1)
    adv, _, terms = m0.encoder_loss(x, z_p, adversarial=True)
    torch.manual_seed(1)
    plain, _, _ = m0.encoder_loss(x, z_p, adversarial=False)
    assert adv.item() == pytest.approx(plain.item(), rel=1e-6)  # KL >= 0 = m: no hinge term
    big = _model(["loss.margin=1000", "loss.alpha=0.5"])
    torch.manual_seed(1)
    loss, _, t = big.encoder_loss(x, z_p, adversarial=True)
    want = t["kl_real"] + 0.5 * t["rec"] + 0.5 * (2000 - t["kl_rec"] - t["kl_fake"])
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_encoder_loss_reaches_the_generator_only_through_reconstruction():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    m = _model(["loss.beta=0", "loss.margin=1000"])
    m.zero_grad(set_to_none=True)
    m.encoder_loss(x, torch.randn(4, 8))[0].backward()
    assert _grad_sum(m.encoder.head) > 0
    assert _grad_sum(m.generator) == 0.0  # sg(x_r), sg(x_p): the hinge never trains G
    m = _model(["loss.beta=1", "loss.margin=1000"])
    m.zero_grad(set_to_none=True)
    m.encoder_loss(x, torch.randn(4, 8))[0].backward()
    assert _grad_sum(m.generator) > 0


def test_generator_step_leaves_the_encoder_untouched():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    m = _model(["loss.beta=0"])  # only the adversarial KL of G's faces
    opt = torch.optim.Adam(m.generator.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    z, z_p = torch.randn(4, 8), torch.randn(4, 8)
    m.zero_grad(set_to_none=True)
    generator_step(opt, lambda: m.generator_loss(x, z, z_p), [m.encoder])
    assert _grad_sum(m.encoder) == 0.0 and _grad_sum(m.generator) > 0
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in m.encoder.head.parameters())  # flags restored


def test_end_to_end_resume_and_bad_input(faces, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["downstream", "introvae", "--encoder", "random:resnet10t", "--data", str(faces),
            "--out", str(out)]
    assert main([*base, *FAST]) == 0
    r = json.loads((out / "report.json").read_text())
    m = r["metrics"]
    assert math.isfinite(m["kid"]) and math.isfinite(m["fd"]) and m["fd"] >= 0
    assert math.isfinite(m["rec_l1"]) and 0 < m["rec_l1"] <= 2 and m["eval_samples"] == 12
    for name in ("samples.png", "reconstructions.png", "loss.png", "kl.png",
                 "reconstruction.png"):
        assert (out / "plots" / name).stat().st_size > 0, name
    assert r["task"] == "introvae" and r["budget"]["steps"] == 2
    assert r["budget"]["optimizer_steps"] == 4  # one E and one G step per batch
    assert main([*base, "--resume", *FAST, "trainer.max_steps=3"]) == 0
    r2 = json.loads((out / "report.json").read_text())
    assert r2["resumed"] is True and r2["budget"]["steps"] == 3
    capsys.readouterr()
    # a latent size that does not match the run's face model: one line, exit 2
    code = main([*base, "--resume", *FAST, "model.latent_dim=16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "model.latent_dim=8" in err[0]
    # a face-model run folder of another task: one line, exit 2
    code = main(["downstream", "vaegan", "--encoder", "random:resnet10t", "--data", str(faces),
                 "--out", str(out), "--resume", *FAST[:-1]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "introvae" in err[0]
    assert json.loads((out / "report.json").read_text()) == r2  # nothing was overwritten
    # a negative weight: one line, exit 2
    code = main(["downstream", "introvae", "--encoder", "random:resnet10t", "--data",
                 str(faces), "--out", str(tmp_path / "neg"), *FAST, "loss.alpha=-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "loss.alpha" in err[0]


def test_rerun_without_resume_starts_new_curves(faces, tmp_path):
    out = tmp_path / "run"
    argv = ["downstream", "introvae", "--encoder", "random:resnet10t", "--data", str(faces),
            "--out", str(out), *FAST, "trainer.save_checkpoint=false"]

    def logged() -> list[int]:
        with (out / "metrics.csv").open() as f:
            return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/e_loss")]

    assert main(argv) == 0 and logged() == [0, 1]
    assert main(argv) == 0 and logged() == [0, 1]  # not [0, 1, 0, 1]
    # a metrics.csv in a folder no run of this task wrote is refused, never deleted
    from downstream.runs import start_run

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "metrics.csv").write_text("precious\n")
    cfg = load_config(IntrovaeConfig, "introvae", None, FAST)
    with pytest.raises(Exception, match="no downstream introvae run wrote"):
        start_run(foreign, cfg)
    assert (foreign / "metrics.csv").read_text() == "precious\n"
