"""Face GAN: building blocks, frozen encoder inside the discriminator, end-to-end runs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.export import export_encoder, resolve_encoder
from backbone_ssl.nn.training import critic_loss
from downstream import run_downstream
from downstream.encoder import EncoderInput
from downstream.gan import DCGANGenerator, EncoderFeatureDiscriminator

FAST = ["trainer.max_steps=3", "trainer.enable_progress_bar=false", "data.image_size=32",
        "data.batch_size=8", "model.latent_dim=16", "model.gen_channels=8",
        "model.head_hidden=16", "model.disc_channels=8", "metrics.max_eval=12",
        "metrics.ref_encoder=random:resnet10t", "trainer.save_checkpoint=false",
        "trainer.log_every_n_steps=1"]


def test_generator_shapes_range_and_dependence_on_z():
    torch.manual_seed(0)
    g = DCGANGenerator(16, size=32, channels=8)
    z = torch.randn(5, 16)
    x = g(z)
    assert x.shape == (5, 3, 32, 32) and x.abs().max() <= 1.0
    loud = copy.deepcopy(g)
    last = [m for m in loud.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1000)  # the last layer's outputs go far past +-1: only tanh bounds them
        y = loud(z)
    assert y.abs().max() <= 1.0 and y.abs().max() > 0.999
    g.eval()  # batch norm on running statistics: each image depends on its own z only
    with torch.no_grad():
        a, b = g(z), g(torch.cat([z[:2], torch.randn(3, 16)]))
    torch.testing.assert_close(a[:2], b[:2])
    scale = a.abs().max()  # fresh running statistics: small outputs, compare relatively
    assert (a[2:] - b[2:]).abs().amax((1, 2, 3)).min() > 0.1 * scale  # another z, another image
    assert a.std((2, 3)).min() > 0.05 * scale  # not a flat colour
    g.train()
    g(z).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


def test_frozen_encoder_discriminator_passes_gradients_but_keeps_weights():
    enc = resolve_encoder("random:resnet10t", input_size=32)
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    feats = EncoderInput(enc)
    d = EncoderFeatureDiscriminator(feats, enc.num_features, hidden=8).train()
    assert not feats.encoder.training  # stays in eval mode (BN statistics untouched)
    fake = torch.rand(4, 3, 32, 32, requires_grad=True)
    real = torch.rand(4, 3, 32, 32) * 2 - 1
    loss = critic_loss("wgan-gp", d, real, fake)
    loss.backward()
    assert all(p.grad is None for p in feats.parameters())
    assert all(p.grad is not None for p in d.head.parameters())
    d(fake).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # the generator gets a signal
    for k, v in enc.module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    return draw_identity_folder(tmp_path_factory.mktemp("gan") / "faces", identities=4,
                                per_identity=8, size=32)


def _run(faces, out, spec, extra=()):
    report = run_downstream("gan", encoder=spec, data=str(faces), out=str(out),
                            overrides=[*FAST, *extra])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    m = report["metrics"]
    assert math.isfinite(m["fd"]) and m["fd"] >= 0 and math.isfinite(m["fd_real"])
    assert math.isfinite(m["kid"]) and m["fd_dim"] == 11 and m["fd_imag"] < 1e-2
    assert m["eval_samples"] == 12 and report["budget"]["steps"] == 3
    assert "not Inception KID/FID" in report["reference"]["note"]
    assert report["reference"]["random"] is True  # the default reference, flagged
    assert (out / "plots" / "samples.png").is_file() and (out / "metrics.csv").is_file()
    return report


def test_end_to_end_random_exported_and_wgan(faces, tmp_path):
    r = _run(faces, tmp_path / "r", "random:resnet10t")
    assert r["encoder"]["method"] == "random" and r["encoder_in_discriminator"] is True
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=32, meta={"method": "byol", "steps": 2})
    e = _run(faces, tmp_path / "e", str(enc), ["loss.gan=wgan-gp"])
    assert e["encoder"]["method"] == "byol" and e["budget"]["loss"] == "wgan-gp"
    # the real-vs-real floor depends only on data and reference encoder, not on the encoder
    assert e["metrics"]["fd_real"] == pytest.approx(r["metrics"]["fd_real"])
    # wgan-gp: 5 critic steps per generator step by default -> 3 x (5 + 1) optimiser steps
    assert e["budget"]["optimizer_steps"] == 18 and r["budget"]["optimizer_steps"] == 6


def test_wgan_gp_defaults_and_validation():
    from backbone_ssl.config import load_config
    from backbone_ssl.errors import UserError
    from downstream.config import GanConfig

    w = load_config(GanConfig, "gan", None, ["loss.gan=wgan-gp"])
    assert (w.optim.beta1, w.optim.beta2, w.loss.n_critic) == (0.0, 0.9, 5)
    n = load_config(GanConfig, "gan", None, [])
    assert (n.optim.beta1, n.optim.beta2, n.loss.n_critic) == (0.5, 0.999, 1)
    assert n.model.diffaugment == "color,translation,cutout"  # on by default
    for bad in (["loss.n_critic=1"], ["optim.beta1=0.9"]):
        with pytest.raises(UserError, match="wgan-gp needs"):
            load_config(GanConfig, "gan", None, ["loss.gan=wgan-gp", *bad])
    with pytest.raises(UserError, match="model.diffaugment"):
        load_config(GanConfig, "gan", None, ["model.diffaugment=color,flip"])


def test_size_mismatch_exit_2_unless_conv_discriminator(faces, tmp_path, capsys):
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=64)
    code = main(["downstream", "gan", "--encoder", str(enc), "--data", str(faces),
                 "--out", str(tmp_path / "bad"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "takes 64x64 input" in err[0]
    r = _run(faces, tmp_path / "conv", str(enc), ["model.encoder_in_discriminator=false"])
    assert r["encoder_in_discriminator"] is False


def test_projected_discriminator_heads_train_encoder_stays_frozen():
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    before = {k: v.clone() for k, v in enc.module.state_dict().items()}
    stages = EncoderStages(EncoderInput(enc), 3)
    assert stages.channels == [128, 256, 512]  # resnet10t's last three stages
    d = ProjectedDiscriminator(stages, stages.channels, width=8).train()
    fake = torch.rand(4, 3, 32, 32, requires_grad=True)
    out = d(fake)
    assert out.shape == (4,)
    critic_loss("wgan-gp", d, torch.rand(4, 3, 32, 32) * 2 - 1, fake).backward()
    assert all(p.grad is None for p in enc.module.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())
    assert all(h[0].weight.grad.abs().sum() > 0 for h in d.heads)  # every scale's head learns
    d(fake).sum().backward()
    assert fake.grad.abs().sum() > 0  # the generator gets a signal through the frozen stages
    for k, v in enc.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_projected_normalise_standardises_each_stage_and_mixing_stays_fixed():
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    stages = EncoderStages(EncoderInput(enc), 3)
    real = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    d = ProjectedDiscriminator(stages, stages.channels, width=8, normalise=True, mixing=True)
    raw = [f.std().item() for f in d._raw_maps(real)]
    d.calibrate(real)
    d.mixers = torch.nn.ModuleList()  # look at the standardised maps themselves
    for f in d._maps(real):
        assert f.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        live = f.std(dim=(0, 2, 3)) > 0.5  # channels that are not constant on this batch
        assert live.float().mean() > 0.5
        assert torch.allclose(f.std(dim=(0, 2, 3))[live], torch.ones(int(live.sum())), atol=1e-3)
    assert max(raw) < 0.5  # the random encoder's raw stages are far from unit size
    # the statistics travel with the weights (resume), the mixers do not train
    d2 = ProjectedDiscriminator(stages, stages.channels, width=8, normalise=True, mixing=True)
    assert {"shift0", "scale2"} <= set(d2.state_dict())
    critic_loss("nonsaturating", d2, real[:4], torch.rand(4, 3, 32, 32)).backward()
    assert all(m.weight.grad is None and not m.weight.requires_grad for m in d2.mixers)
    assert all(p.grad is not None for p in d2.heads.parameters())


def test_critic_ensemble_gives_each_critic_its_own_loss():
    from backbone_ssl.nn.critics import ConvDiscriminator, CriticEnsemble

    torch.manual_seed(0)
    a, b = ConvDiscriminator(32, width=8), ConvDiscriminator(32, width=8)
    ens = CriticEnsemble([a, b])
    real, fake = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    out = ens(real)
    assert out.shape == (4, 2)
    assert torch.allclose(out[:, 1], b(real))
    loss = critic_loss("nonsaturating", ens, real, fake)
    # the mean over critics of each critic's own loss (not the loss of the summed score)
    own = (critic_loss("nonsaturating", a, real, fake) + critic_loss("nonsaturating", b, real,
                                                                     fake)) / 2
    assert loss.item() == pytest.approx(own.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in ens.parameters())


def test_hybrid_critic_run_reports_its_discriminator_and_collapse_metrics(faces, tmp_path):
    r = _run(faces, tmp_path / "h", "random:resnet10t",
             ["model.projected_normalise=true", "model.pixel_critic=true"])
    assert r["discriminator"] == "projected:3+norm+mbstd+sn+global+conv"
    m = r["metrics"]
    assert 0.0 <= m["coverage"] <= 1.0 and m["diversity"] > 0


def test_projected_blur_hides_a_pixel_checker_from_the_frozen_stages():
    """model.projected_blur low-passes D's input before the encoder: a one-pixel checker added to
    the faces moves the stage maps far less than without the blur; a negative sigma is refused."""
    from backbone_ssl.config import load_config
    from backbone_ssl.errors import UserError
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.config import GanConfig
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    stages = EncoderStages(EncoderInput(enc), 3)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.6
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = 0.4 * (((yy + xx) % 2) * 2 - 1).float()

    def moved(sigma: float) -> float:
        d = ProjectedDiscriminator(stages, stages.channels, width=8, blur_sigma=sigma)
        a, b = d._raw_maps(x), d._raw_maps(x + checker)
        return sum(float((fa - fb).norm() / fa.norm()) for fa, fb in zip(a, b))

    assert moved(1.0) < 0.3 * moved(0.0)
    with pytest.raises(UserError, match="model.projected_blur"):
        load_config(GanConfig, "gan", None, ["model.projected_blur=-1"])


def test_minibatch_std_sees_the_batch_spread():
    """MinibatchStd (ProGAN) adds one channel: ~0 for a batch of identical samples, the group's
    feature std otherwise; strided groups; any batch size (a prime one: one group)."""
    from backbone_ssl.nn import MinibatchStd

    m = MinibatchStd(group=4)
    same = torch.randn(1, 5, 3, 3).repeat(8, 1, 1, 1)
    varied = torch.randn(8, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    assert m(same).shape == (8, 6, 3, 3)
    assert torch.equal(m(same)[:, :5], same)
    assert m(same)[:, 5].max() < 1e-3
    stat = m(varied)[:, 5, 0, 0]
    expect = varied.reshape(4, 2, 5, 3, 3).std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
    assert torch.allclose(stat, expect.repeat(4), atol=1e-4)  # sample i in group i mod 2
    assert m(torch.randn(7, 5, 3, 3))[:, 5].min() > 0.1  # 7: the whole batch is one group
    assert m(torch.randn(1, 5, 3, 3))[:, 5].abs().max() == 0


def test_projected_mbstd_scores_depend_on_the_rest_of_the_batch(faces, tmp_path):
    """With model.projected_mbstd a sample's score changes when the other samples of its batch
    change (D can see a collapsed batch); without it, scores are per sample. The run names it."""
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    stages = EncoderStages(EncoderInput(enc), 3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g) * 2 - 1
    y = x.clone()
    y[1:] = x[:1]  # the same first sample, the rest of the batch now identical to it
    for mbstd in (False, True):
        torch.manual_seed(0)
        d = ProjectedDiscriminator(stages, stages.channels, width=8, minibatch_std=mbstd).eval()
        with torch.no_grad():
            gap = float((d(x)[0] - d(y)[0]).abs())
        assert (gap > 1e-4) == mbstd, (mbstd, gap)
    r = _run(faces, tmp_path / "mb", "random:resnet10t", ["model.projected_sn=false",
                                                           "model.projected_global=false"])
    assert r["discriminator"] == "projected:3+mbstd+conv"


def test_projected_sn_bounds_every_head_conv(faces, tmp_path):
    """model.projected_sn: each head conv's weight has spectral norm ~1 after a few train-mode
    power iterations, whatever its scale; without it a scaled head keeps its scale."""
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    stages = EncoderStages(EncoderInput(enc), 3)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for sn in (False, True):
        torch.manual_seed(0)
        d = ProjectedDiscriminator(stages, stages.channels, width=8, spectral_norm=sn).train()
        convs = [m for h in d.heads for m in h if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 9
        with torch.no_grad():
            for c in convs:  # scale the trainable weight (the parametrisation's original)
                w = c.parametrizations.weight.original if sn else c.weight
                w.mul_(50.0)
            for _ in range(30):
                d(x)
        with torch.no_grad():
            sigmas = [float(torch.linalg.matrix_norm(c.weight.flatten(1), ord=2)) for c in convs]
        if sn:
            assert max(abs(s - 1.0) for s in sigmas) < 0.05, sigmas
        else:
            assert min(sigmas) > 5.0, sigmas
    r = _run(faces, tmp_path / "sn", "random:resnet10t", ["model.projected_mbstd=false",
                                                           "model.projected_global=false",
                                                           "model.pixel_critic=false"])
    assert r["discriminator"] == "projected:3+sn"


def test_projected_global_heads_judge_the_whole_map(faces, tmp_path):
    """model.projected_global: each head's last conv spans its stage map (one logit per image,
    weights for every position); without it the head gives a logit per position (patch mean)."""
    from backbone_ssl.nn.critics import ProjectedDiscriminator
    from downstream.encoder import EncoderStages

    enc = resolve_encoder("random:resnet10t", input_size=32, seed=0)
    stages = EncoderStages(EncoderInput(enc), 3)
    assert stages.sizes == [4, 2, 1]  # resnet10t at 32 px: strides 8, 16, 32
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for sizes, side in ((None, None), (stages.sizes, 1)):
        torch.manual_seed(0)
        d = ProjectedDiscriminator(stages, stages.channels, width=8, sizes=sizes).eval()
        with torch.no_grad():
            outs = [h(f) for h, f in zip(d.heads, d._maps(x))]
            assert d(x).shape == (4,)
        for out, s in zip(outs, stages.sizes):
            assert out.shape == (4, 1, side or s, side or s)
    with pytest.raises(ValueError, match="one side per map"):
        ProjectedDiscriminator(stages, stages.channels, width=8, sizes=[4, 2])
    r = _run(faces, tmp_path / "gl", "random:resnet10t")  # the defaults (issue 14's study)
    assert r["discriminator"] == "projected:3+mbstd+sn+global+conv"
