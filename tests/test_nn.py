"""backbone_ssl.nn: GAN losses, penalties, DiffAugment and the step helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from backbone_ssl.nn import (
    AugmentedCritic,
    ConvDiscriminator,
    critic_loss,
    diff_augment,
    discriminator_loss,
    generator_loss,
    generator_step,
    gradient_penalty,
    r1_penalty,
    set_requires_grad,
    train_critic,
)
from backbone_ssl.nn.diffaugment import check_policy, rand_cutout, rand_translation

KINDS = ("nonsaturating", "hinge", "wgan-gp")


def images(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ---- losses and penalties -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_loss_signs(kind):
    good, bad = torch.full((4,), 3.0), torch.full((4,), -3.0)
    # a critic that scores real high and fake low has a lower loss than the reverse
    assert discriminator_loss(kind, good, bad) < discriminator_loss(kind, bad, good)
    # the generator's loss falls as the critic rates its samples higher
    assert generator_loss(kind, good) < generator_loss(kind, bad)


def test_r1_of_a_linear_critic_is_its_squared_norm():
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    real = torch.randn(6, 2).requires_grad_(True)
    r1 = r1_penalty(real @ w, real)
    assert abs(float(r1) - 25.0) < 1e-5  # grad_x <w, x> = w, ||w||^2 = 25
    r1.backward()  # it trains the critic: d/dw ||w||^2 = 2w
    torch.testing.assert_close(w.grad, 2 * w.detach())


def test_r1_is_non_zero_on_real_images_and_needs_grad():
    torch.manual_seed(0)
    d = ConvDiscriminator(16, width=4)
    real = images().requires_grad_(True)
    assert float(r1_penalty(d(real), real)) > 0
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(d(images()), images())


def test_gradient_penalty_is_zero_for_a_1_lipschitz_linear_critic():
    w = torch.randn(3 * 16 * 16)
    w = w / w.norm()  # <w, x> has gradient w, of norm 1, at every interpolate

    def critic(x):
        return x.flatten(1) @ w

    assert float(gradient_penalty(critic, images(seed=1), images(seed=2))) < 1e-10
    gp3 = gradient_penalty(lambda x: critic(x) * 3, images(), images(seed=3))
    assert abs(float(gp3) - 4) < 1e-4  # (3 - 1)^2


def test_critic_loss_adds_r1_and_gp():
    torch.manual_seed(0)
    d = ConvDiscriminator(16, width=4)
    real, fake = images(seed=1), images(seed=2)
    base = critic_loss("hinge", d, real, fake)
    with_r1 = critic_loss("hinge", d, real, fake, r1_weight=2.0)
    r = real.clone().requires_grad_(True)
    torch.testing.assert_close(with_r1 - base, r1_penalty(d(r), r))  # weight / 2 = 1
    assert critic_loss("wgan-gp", d, real, fake) > discriminator_loss("wgan-gp", d(real), d(fake))


# ---- DiffAugment --------------------------------------------------------------------------
def test_diff_augment_same_shape_differentiable_and_changes_images():
    x = images(8).requires_grad_(True)
    y = diff_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    assert (y - x).abs().mean() > 0.05
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_diff_augment_is_the_same_op_for_the_same_draws():
    x = images(4)
    a = diff_augment(x, generator=torch.Generator().manual_seed(5))
    b = diff_augment(x, generator=torch.Generator().manual_seed(5))
    c = diff_augment(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(diff_augment(x, "none"), x)


def test_translation_shifts_and_cutout_blanks_a_quarter():
    x = images(16, size=16)
    t = rand_translation(x, torch.Generator().manual_seed(0))
    for i in range(len(x)):  # each output is a shifted copy (zero-filled border) of its input
        found = any(torch.equal(t[i, :, max(dy, 0):16 + min(dy, 0), max(dx, 0):16 + min(dx, 0)],
                                x[i, :, max(-dy, 0):16 + min(-dy, 0), max(-dx, 0):16 + min(-dx, 0)])
                    for dy in range(-2, 3) for dx in range(-2, 3))
        assert found
    ones = torch.ones(64, 3, 16, 16)
    cut = rand_cutout(ones, torch.Generator().manual_seed(0))
    zero_frac = float((cut == 0).float().mean())
    assert 0.1 < zero_frac <= 0.25  # an 8x8 square, clipped at the border
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        check_policy("color,flip")


def test_augmented_critic_augments_every_input():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1).sum(1)

    x = images(2)
    AugmentedCritic(Probe(), "color")(x)
    AugmentedCritic(Probe(), "none")(x)
    assert not torch.allclose(seen[0], x)
    torch.testing.assert_close(seen[1], x)


# ---- step helpers -------------------------------------------------------------------------
def toy_gan(seed=0):
    torch.manual_seed(seed)
    g = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Tanh(), nn.Unflatten(1, (3, 8, 8)))
    frozen = nn.Conv2d(3, 3, 1)
    set_requires_grad(frozen, False)
    d = nn.Sequential(frozen, ConvDiscriminator(8, width=4))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=1e-3)
    return g, d, frozen, opt_g, opt_d


def test_generator_step_computes_no_critic_gradients_and_restores_flags():
    g, d, frozen, opt_g, opt_d = toy_gan()
    before = [p.detach().clone() for p in g.parameters()]
    generator_step(opt_g, lambda: generator_loss("hinge", d(g(torch.randn(4, 4)))), [opt_d])
    assert all(p.grad is None for p in d.parameters())  # no critic gradients were computed
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))  # G did move
    assert all(p.requires_grad for p in d[1].parameters())  # restored
    assert not any(p.requires_grad for p in frozen.parameters())  # frozen stays frozen


def test_train_critic_draws_fresh_data_each_step():
    g, d, frozen, opt_g, opt_d = toy_gan()
    reals = [images(4, size=8, seed=s) for s in range(5)]
    drawn = []

    def draw(i):
        drawn.append(i)
        return reals[i], g(torch.randn(4, 4))

    before = [p.detach().clone() for p in d[1].parameters()]
    loss = train_critic(opt_d, 5, draw, lambda r, f: critic_loss("wgan-gp", d, r, f))
    assert drawn == [0, 1, 2, 3, 4]
    assert not loss.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, d[1].parameters()))
    assert all(p.grad is None for p in g.parameters())  # critic_loss detached the fake
    assert not any(p.requires_grad for p in frozen.parameters())
