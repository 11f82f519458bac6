"""StyleGAN2-style generator: demodulation, style mixing, R1, minibatch-stddev, EMA."""

import torch

from backbone_ssl.nn.gan_losses import r1_penalty
from downstream.stylegan import ModulatedConv2d, ResidualDiscriminator, StyleGenerator


def test_demodulation_keeps_unit_output_std():
    torch.manual_seed(0)
    conv = ModulatedConv2d(32, 32, 3, w_dim=16)
    x, w = torch.randn(8, 32, 16, 16), torch.randn(8, 16) * 3 + 20
    std = conv(x, w)[:, :, 1:-1, 1:-1].std().item()  # inside: no zero padding
    assert 0.8 < std < 1.2
    plain = ModulatedConv2d(32, 32, 3, w_dim=16, demodulate=False)
    plain.load_state_dict(conv.state_dict())
    assert plain(x, w).std().item() > 2.0  # without demod the style scales the output


def test_style_mixing_uses_both_codes():
    torch.manual_seed(0)
    g = StyleGenerator(16, z_dim=8, w_dim=8, mapping_layers=1, channels=8)
    z1 = torch.randn(2, 8, requires_grad=True)
    z2 = torch.randn(2, 8, requires_grad=True)
    ws = g.mix(z1, z2, crossover=2)
    assert torch.allclose(ws[:, 0], ws[:, 1]) and not torch.allclose(ws[:, 1], ws[:, 2])
    img = g.synthesis(ws, noise=False)
    img.sum().backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
    with torch.no_grad():
        only1 = g.synthesis(g.mix(z1), noise=False)
        only2 = g.synthesis(g.mix(z2), noise=False)
    assert (img - only1).abs().max() > 1e-4 and (img - only2).abs().max() > 1e-4


def test_truncation_zero_gives_the_average_face():
    torch.manual_seed(0)
    g = StyleGenerator(16, z_dim=8, w_dim=8, mapping_layers=1, channels=8)
    g.w_avg.normal_()
    ws = g.mix(torch.randn(3, 8), psi=0.0)
    assert torch.allclose(ws, g.w_avg.expand_as(ws))


def test_r1_nonzero_on_real_data():
    torch.manual_seed(0)
    d = ResidualDiscriminator(16, channels=8)
    real = torch.rand(4, 3, 16, 16).mul(2).sub(1).requires_grad_(True)
    assert r1_penalty(d(real), real).item() > 0


def test_minibatch_stddev_sees_the_batch():
    torch.manual_seed(0)
    d = ResidualDiscriminator(16, channels=8)
    x = torch.randn(4, 3, 16, 16)
    same = d(torch.cat([x[:1]] * 4))
    other = d(torch.cat([x[:1], x[1:]]))
    assert (same[0] - other[0]).abs() > 1e-6  # image 0's logit depends on its batch-mates
