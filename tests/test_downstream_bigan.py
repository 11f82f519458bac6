"""Face BiGAN: D judges (x, z) pairs, E starts from the exported encoder, end-to-end runs with
report, grids and resume, and bad input refused with one line."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.export import export_encoder, resolve_encoder
from downstream import run_downstream
from downstream.bigan import BiGAN, JointDiscriminator, PairCritic
from downstream.config import BiganConfig

FAST = ["trainer.max_steps=2", "trainer.enable_progress_bar=false", "data.image_size=16",
        "data.batch_size=6", "model.latent_dim=8", "model.gen_channels=8",
        "model.disc_channels=8", "model.joint_hidden=16", "metrics.max_eval=12",
        "metrics.ref_encoder=random:resnet10t", "trainer.log_every_n_steps=1"]


def _cfg(extra=()):
    return load_config(BiganConfig, "bigan", None, [*FAST, *extra])


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return draw_identity_folder(tmp_path_factory.mktemp("bigan") / "faces", identities=4,
                                per_identity=6, size=16)


def test_discriminator_sees_z():
    torch.manual_seed(0)
    d = PairCritic(JointDiscriminator(16, 8, width=8, hidden=16), 16)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    z1, z2 = torch.randn(4, 8), torch.randn(4, 8)
    out1, out2 = d(PairCritic.pack(x, z1)), d(PairCritic.pack(x, z2))
    assert out1.shape == (4,)
    assert not torch.allclose(out1, out2)  # changing z alone changes D's verdict
    assert torch.equal(out1, d(PairCritic.pack(x, z1)))  # and the same pair gets the same one
    # the packed pair round-trips: the critic gets x and z back unchanged
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, xx, zz):
            seen.update(x=xx, z=zz)
            return zz.sum(1)

    d.critic = Spy()
    d(PairCritic.pack(x, z1))
    assert torch.equal(seen["x"], x) and torch.equal(seen["z"], z1)


def test_wgan_gp_penalty_reaches_z():
    """The Wasserstein BiGAN's gradient penalty is taken on the whole pair: z has a gradient."""
    from backbone_ssl.nn.training import critic_loss

    d = PairCritic(JointDiscriminator(16, 8, width=8, hidden=16), 16)
    real = PairCritic.pack(torch.rand(4, 3, 16, 16), torch.randn(4, 8))
    fake = PairCritic.pack(torch.rand(4, 3, 16, 16), torch.randn(4, 8))
    loss = critic_loss("wgan-gp", d, real, fake)
    loss.backward()
    assert d.critic.latent[0].weight.grad.abs().sum() > 0


def test_encoder_starts_from_exported_weights(tmp_path):
    net = create_backbone("resnet10t")
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.fill_(0.01 * (i % 7) - 0.02)  # weights no random init would give
    enc_dir = export_encoder(net, "resnet10t", tmp_path / "enc", input_size=16,
                             meta={"method": "byol"})
    model = BiGAN(_cfg(), resolve_encoder(str(enc_dir)))
    got = model.encoder.features.encoder.state_dict()
    want = net.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    rand = BiGAN(_cfg(), resolve_encoder("random:resnet10t", input_size=16))
    assert not torch.equal(rand.encoder.features.encoder.conv1[0].weight,
                           got["conv1.0.weight"])
    assert model.encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 8)


def test_wgan_gp_defaults():
    c = _cfg(["loss.gan=wgan-gp"])
    assert (c.optim.beta1, c.optim.beta2, c.loss.n_critic) == (0.0, 0.9, 5)
    from backbone_ssl.errors import UserError
    with pytest.raises(UserError, match="wgan-gp needs"):
        _cfg(["loss.gan=wgan-gp", "loss.n_critic=1"])


def _check(report, out):
    assert json.loads((out / "report.json").read_text()) == report
    m = report["metrics"]
    assert math.isfinite(m["kid"]) and math.isfinite(m["fd"]) and m["fd"] >= 0
    assert math.isfinite(m["rec_l1"]) and 0 < m["rec_l1"] <= 2
    assert m["eval_samples"] == 12
    for name in ("samples.png", "reconstructions.png", "loss.png"):
        assert (out / "plots" / name).stat().st_size > 0, name
    assert report["task"] == "bigan"


def test_end_to_end_resume_and_wasserstein(faces, tmp_path):
    out = tmp_path / "run"
    r = run_downstream("bigan", encoder="random:resnet10t", data=str(faces), out=str(out),
                       overrides=FAST)
    _check(r, out)
    assert r["budget"]["steps"] == 2 and r["budget"]["optimizer_steps"] == 4
    assert r["encoder"]["frozen"] is False and r["resumed"] is False
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" in ckpt and ckpt["global_step"] == 4
    # resume continues the step count up to the new budget
    r2 = run_downstream("bigan", encoder="random:resnet10t", data=str(faces), out=str(out),
                        overrides=[*FAST, "trainer.max_steps=3"], resume=True)
    assert r2["budget"]["steps"] == 3 and r2["budget"]["optimizer_steps"] == 6
    assert r2["resumed"] is True
    with (out / "metrics.csv").open() as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/d_loss")]
    assert len(logged) == 3 and logged == sorted(set(logged))  # one new batch, steps continue
    ckpt2 = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    moved = [k for k, v in ckpt["state_dict"].items()
             if v.is_floating_point() and not torch.equal(v, ckpt2["state_dict"][k])]
    assert any(k.startswith("generator.") for k in moved)
    assert any(k.startswith("encoder.head") for k in moved)
    # Wasserstein BiGAN from an exported encoder
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=16, meta={"method": "byol", "steps": 2})
    w = run_downstream("bigan", encoder=str(enc), data=str(faces), out=str(tmp_path / "w"),
                       overrides=[*FAST, "loss.gan=wgan-gp", "loss.n_critic=2",
                                  "trainer.save_checkpoint=false"])
    _check(w, tmp_path / "w")
    assert w["encoder"]["method"] == "byol" and w["budget"]["loss"] == "wgan-gp"
    assert w["budget"]["optimizer_steps"] == 2 * (2 + 1)


def _cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_bad_input_one_line_exit_2(faces, tmp_path, capsys):
    base = ["downstream", "bigan", "--encoder", "random:resnet10t", "--data", str(faces)]
    # --resume where there is no run
    code, err = _cli([*base, "--out", str(tmp_path / "none"), "--resume", *FAST], capsys)
    assert code == 2 and len(err) == 1 and "not a finished downstream bigan run" in err[0]
    # a run folder from another task
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("task: vaegan\nmodel:\n  latent_dim: 8\n")
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(Exception, match="run of task 'vaegan', not 'bigan'"):
        run_downstream("bigan", encoder="random:resnet10t", data=str(faces), out=str(other),
                       overrides=FAST, resume=True)
    # a latent size that does not match the run's face model
    (other / "config.yaml").write_text("task: bigan\nmodel:\n  latent_dim: 8\n  gen_channels: 8"
                                       "\n  disc_channels: 8\nloss:\n  n_critic: 1\n")
    with pytest.raises(Exception, match="model.latent_dim=8, the config asks for 12"):
        run_downstream("bigan", encoder="random:resnet10t", data=str(faces), out=str(other),
                       overrides=[*FAST, "model.latent_dim=12"], resume=True)
    # an encoder trained at another size
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc64",
                         input_size=64)
    code, err = _cli(["downstream", "bigan", "--encoder", str(enc), "--data", str(faces),
                      "--out", str(tmp_path / "bad"), *FAST], capsys)
    assert code == 2 and len(err) == 1 and "takes 64x64 input" in err[0]
    # --resume on a task that has none
    code, err = _cli(["downstream", "gan", "--encoder", "random:resnet10t", "--data",
                      str(faces), "--out", str(tmp_path / "g"), "--resume"], capsys)
    assert code == 2 and len(err) == 1 and "--resume is supported by" in err[0]


@pytest.mark.parametrize("kind", ["nonsaturating", "wgan-gp"])
def test_encoder_generator_loss_swaps_labels(kind):
    import torch.nn.functional as F

    m = BiGAN(_cfg([f"loss.gan={kind}", "model.diffaugment=none"]),
              resolve_encoder("random:resnet10t", input_size=16)).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    got = m.encoder_generator_loss(x)
    torch.manual_seed(3)
    z = torch.randn(4, 8)
    real = m.discriminator(PairCritic.pack(x, m.encoder(x)))
    fake = m.discriminator(PairCritic.pack(m.generator(z), z))
    want = (F.softplus(-fake).mean() + F.softplus(real).mean() if kind == "nonsaturating"
            else real.mean() - fake.mean())
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("name", ["bigan", "vaegan", "introvae"])
def test_shipped_yaml_documents_every_default(name):
    from omegaconf import OmegaConf

    from backbone_ssl.config import default_config_file
    from downstream.config import CONFIGS, TASKS

    assert name in TASKS
    path = default_config_file(name)
    shipped = OmegaConf.to_container(OmegaConf.load(path))
    assert shipped == OmegaConf.to_container(OmegaConf.structured(CONFIGS[name]))
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("  ")]
    undocumented = [ln for ln in lines if "#" not in ln]
    assert not undocumented, undocumented
