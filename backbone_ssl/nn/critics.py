"""Critics (discriminators) shared by pretraining and downstream.

Global and local critics for inpainting (Iizuka et al., 2017, "Globally and Locally Consistent
Image Completion"; Li et al., 2017, "Generative Face Completion"): small DCGAN-style critics
(Radford et al., 2015), strided 4x4 convolutions with LeakyReLU and no normalisation (so they
suit every loss in :mod:`backbone_ssl.nn.gan_losses`, WGAN-GP included, whose penalty is per
sample), then a linear layer to one score per image. The global one sees the whole completed
image, the local one the hole's bounding box cropped and resized to a fixed size
(:func:`crop_boxes`, differentiable ``roi_align``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.ops import roi_align


class ConvDiscriminator(nn.Module):
    """``[B,C,S,S]`` -> ``[B]`` scores (logits for non-saturating / hinge, critic for WGAN).

    Halves the resolution with stride-2 convolutions until it is at most 4 (channels
    ``width, 2*width, ...`` up to ``8*width``), then flattens into a linear layer.
    """

    def __init__(self, image_size: int, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch, size = in_channels, width, image_size
        n_down = max(1, math.ceil(math.log2(max(image_size, 2) / 4)))
        for _ in range(n_down):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1),
                       nn.LeakyReLU(0.2, inplace=True)]
            ch_in, ch, size = ch, min(ch * 2, 8 * width), size // 2  # k4 s2 p1: floor(n/2)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch_in * size * size, 1)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al., 2018, "Progressive Growing of GANs", sec. 3):
    ``[B,C,H,W]`` -> ``[B,C+1,H,W]``, the extra channel the std over a group of ``group`` samples
    of each feature, averaged over features and positions, one value per group.

    A critic that sees it can tell a batch of near-identical samples (mode collapse) from a
    varied real batch, which a per-sample critic cannot. Groups are strided as in StyleGAN
    (sample ``i`` is in group ``i mod (B/g)``); ``g`` is the largest divisor of ``B`` that is at
    most ``group`` (the whole batch when there is none), so any batch size works.
    """

    def __init__(self, group: int = 4) -> None:
        super().__init__()
        if group < 2:
            raise ValueError(f"MinibatchStd needs group >= 2, got {group}")
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group, b) + 1) if b % d == 0)
        if g < 2:  # no divisor in [2, group] (a prime batch size): the whole batch is one group
            g = b
        if g < 2:  # a batch of one has no spread
            return torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)
        y = x.reshape(g, b // g, c, h, w)
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # [B/g,C,H,W]
        stat = std.mean(dim=(1, 2, 3))  # [B/g]
        stat = stat.repeat(g)[:, None, None, None].expand(b, 1, h, w)  # sample i -> group i % (B/g)
        return torch.cat([x, stat], dim=1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` ``[B,4]`` ``(x1,y1,x2,y2)`` (pixels) out of ``images`` ``[B,C,H,W]`` and
    resize each to ``[C,size,size]`` (bilinear, differentiable) -> ``[B,C,size,size]``."""
    idx = torch.arange(images.shape[0], device=images.device, dtype=images.dtype)[:, None]
    rois = torch.cat([idx, boxes.to(images)], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


class ProjectedDiscriminator(nn.Module):
    """Multi-scale critic on frozen features (Projected GAN, Sauer et al., 2021,
    https://arxiv.org/abs/2111.01007): ``features(x)`` returns a list of maps ``[B,C_i,H_i,W_i]``
    (a frozen pretrained encoder's stages), each judged by its own small trainable head; the
    score is the sum of the per-scale scores -> ``[B]``.

    ``normalise``: each map is standardised per channel with a fixed mean and std measured on
    real images (:meth:`calibrate`), so every scale reaches its head at unit size whatever the
    encoder (a random one's deep stages are an order of magnitude smaller than its stem's).
    ``mixing``: a fixed random 1x1 convolution per scale before its head (the paper's
    cross-channel mixing, CCM), which spreads every feature over the channels the head sees.
    ``blur_sigma``: a Gaussian blur of the input before the frozen encoder (anti-aliasing,
    Zhang 2019), so a generator cannot fool the strided stages with a high-frequency pattern
    aligned to their grid; the fine detail is left to a pixel critic beside it.
    ``minibatch_std``: each head also sees the spread of its batch (:class:`MinibatchStd`,
    ProGAN), so a generator that draws one texture for every latent is told apart from real.
    ``spectral_norm``: every head conv is spectrally normalised (Miyato et al. 2018), as in the
    Projected GAN discriminator's blocks, which bounds how fast the heads can outrun G.
    ``sizes`` (the maps' sides ``H_i``): each head's last conv covers its whole map (kernel
    ``H_i``, no padding) and gives one logit per image, as the paper's heads end in a 4x4 conv on
    a 4x4 map, so every scale judges the layout; without it the heads' per-position logits are
    averaged (a patch critic, which one texture repeated on the stride grid can satisfy).

    Each head: 1x1 conv to ``width`` channels, LeakyReLU, [minibatch std], 3x3 conv, LeakyReLU,
    1x1 conv to one logit map averaged over space (with ``sizes``: one conv over the whole map).
    No normalisation inside the heads (WGAN-GP's per-sample penalty holds; the minibatch std
    couples samples only through one extra channel).
    There is no cross-scale fusion (CSM): small heads are what a CPU run affords.
    """

    def __init__(self, features: nn.Module, channels: list[int], width: int = 64,
                 normalise: bool = False, mixing: bool = False, seed: int = 0,
                 blur_sigma: float = 0.0, minibatch_std: bool = False,
                 spectral_norm: bool = False, sizes: list[int] | None = None) -> None:
        super().__init__()
        self.features = features
        self.normalise = normalise
        self.blur_sigma = float(blur_sigma)
        for i, c in enumerate(channels):  # identity until calibrate(); saved with the weights
            self.register_buffer(f"shift{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"scale{i}", torch.ones(1, c, 1, 1))
        self.mixers = nn.ModuleList()
        if mixing:
            g = torch.Generator().manual_seed(seed)
            for c in channels:
                mix = nn.Conv2d(c, c, 1, bias=False)
                bound = math.sqrt(3.0 / c)  # unit gain on unit-variance input
                with torch.no_grad():
                    mix.weight.copy_((torch.rand(c, c, 1, 1, generator=g) * 2 - 1) * bound)
                mix.weight.requires_grad_(False)
                self.mixers.append(mix)
        mbstd = [MinibatchStd()] if minibatch_std else []

        if sizes is not None and len(sizes) != len(channels):
            raise ValueError(f"sizes {sizes} must give one side per map ({len(channels)})")

        def conv(c_in: int, c_out: int, k: int, padding: int | None = None) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, k, padding=k // 2 if padding is None else padding)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        self.heads = nn.ModuleList(
            nn.Sequential(conv(c, width, 1), nn.LeakyReLU(0.2, inplace=True), *mbstd,
                          conv(width + len(mbstd), width, 3),
                          nn.LeakyReLU(0.2, inplace=True),
                          conv(width, 1, 1) if sizes is None else conv(width, 1, sizes[i], 0))
            for i, c in enumerate(channels))

    @torch.no_grad()
    def calibrate(self, real: torch.Tensor) -> None:
        """Fix the per-channel mean and std of each scale from real images ``[N,3,H,W]``
        (N >= 2); no-op unless ``normalise``."""
        if not self.normalise:
            return
        for i, f in enumerate(self._raw_maps(real)):
            mean = f.mean(dim=(0, 2, 3), keepdim=True)
            std = f.std(dim=(0, 2, 3), keepdim=True)
            getattr(self, f"shift{i}").copy_(mean)
            getattr(self, f"scale{i}").copy_(std.clamp_min(1e-3 * float(std.max()) + 1e-12))

    def _raw_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's maps of ``x`` (blurred first when ``blur_sigma`` > 0)."""
        if self.blur_sigma > 0:
            from torchvision.transforms.functional import gaussian_blur

            k = 2 * math.ceil(2 * self.blur_sigma) + 1
            x = gaussian_blur(x, [k, k], [self.blur_sigma, self.blur_sigma])
        return self.features(x)

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the heads see: raw maps, standardised (``normalise``), then mixed (``mixing``)."""
        maps = self._raw_maps(x)
        if self.normalise:
            maps = [(f - getattr(self, f"shift{i}")) / getattr(self, f"scale{i}")
                    for i, f in enumerate(maps)]
        if len(self.mixers):
            maps = [mix(f) for mix, f in zip(self.mixers, maps)]
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(head(f).mean(dim=(1, 2, 3)) for head, f in zip(self.heads, self._maps(x)))


class CriticEnsemble(nn.Module):
    """Several critics on the same input, one score column each: ``[B,3,H,W]`` -> ``[B,K]``.

    The adversarial losses of :mod:`backbone_ssl.nn.gan_losses` average over every element, so
    each critic gets its own loss term (their mean), as in Vision-aided GAN (Kumari et al.,
    "Ensembling Off-the-shelf Models for GAN Training", 2022: frozen-feature critics added
    beside the usual pixel critic); the gradient penalties (WGAN-GP, R1) apply to the sum of
    the scores.
    """

    def __init__(self, critics: list[nn.Module]) -> None:
        super().__init__()
        if not critics:
            raise ValueError("CriticEnsemble needs at least one critic")
        self.critics = nn.ModuleList(critics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([c(x) for c in self.critics], dim=1)
