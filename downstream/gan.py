"""GAN building blocks for the downstream models: the DCGAN generator, the local / global
discriminators, a discriminator on frozen encoder features, and the per-critic loss.

DCGAN: Radford et al., "Unsupervised Representation Learning with Deep Convolutional GANs", 2016.
Global + local discriminators: Iizuka et al., "Globally and Locally Consistent Image Completion",
2017 (as SSuperGAN uses them). The conv discriminators, the adversarial losses (non-saturating,
hinge, WGAN-GP with its gradient penalty), DiffAugment and the step helpers live in
:mod:`backbone_ssl.nn`, shared with pretraining rather than duplicated; the discriminators have no
normalisation, so WGAN-GP's per-sample penalty holds.

Images are ``[B,3,S,S]`` in [-1, 1] (the generator ends in ``tanh``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["DCGANGenerator", "EncoderFeatureDiscriminator", "dcgan_init"]


def _log2_steps(size: int, base: int = 4) -> int:
    steps = math.log2(size / base)
    if size < 8 or steps != int(steps):
        raise ValueError(f"image size must be 4 x a power of two >= 8, got {size}")
    return int(steps)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), norm weights ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """``z [B,latent_dim]`` -> image ``[B,3,size,size]`` in [-1, 1].

    A 4x4 transposed convolution from 1x1, then stride-2 transposed convolutions that halve the
    width (``channels * 2^k`` down to ``channels``) and double the side up to ``size``.
    """

    def __init__(self, latent_dim: int, size: int = 64, channels: int = 64) -> None:
        super().__init__()
        n_up = _log2_steps(size)
        width = channels * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(True),
        ]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class EncoderFeatureDiscriminator(nn.Module):
    """Frozen pretrained features + a small trainable head: ``[B,3,S,S]`` -> ``[B]`` logits.

    ``features`` maps [-1, 1] images to ``[B,D]`` (a frozen encoder behind its input adapter);
    gradients still flow through it to the generator, only the head is trained.
    """

    def __init__(self, features: nn.Module, feature_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2, True),
                                  nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
