"""``downstream stylegan``: a compact StyleGAN2-style generator on face crops, in plain PyTorch.

Follows Karras et al., 2020 ("Analyzing and Improving the Image Quality of StyleGAN",
https://arxiv.org/abs/1912.04958), written from the paper (no CUDA custom ops):

- mapping network ``z -> w`` (``model.mapping_layers`` equalised-lr FC layers, lr multiplier);
- synthesis from a learned constant 4x4 input; per block: bilinear x2 upsample, two modulated +
  demodulated 3x3 convs (one grouped conv per layer: the weight is scaled per sample by the
  style, renormalised to unit output variance, and the batch folded into the groups), per-layer
  noise with a learned strength, and a skip to-RGB (1x1 modulated, not demodulated) summed over
  resolutions;
- style mixing (two ``w`` with a random crossover layer), truncation around a tracked ``w_avg``;
- an EMA copy of G used for every sample and metric;
- a residual discriminator with a minibatch-stddev channel;
- non-saturating loss, lazy R1 (every ``loss.r1_every`` D steps, weight scaled by it), DiffAugment,
  all from :mod:`backbone_ssl.nn`.

Left out: path-length regularisation, equalised lr in D, antialiased (FIR) resampling.
KID and FD are measured in the frozen ``--encoder`` (a domain encoder), never Inception.
"""

from __future__ import annotations

import copy
import math
import random

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from backbone_ssl.errors import UserError
from backbone_ssl.nn.diffaugment import diff_augment
from backbone_ssl.nn.gan_losses import generator_loss
from backbone_ssl.nn.training import critic_loss, generator_step
from downstream.encoder import encoder_info, load_task_encoder
from downstream.runs import (
    RANDOM_REF_NOTE,
    eval_device,
    make_trainer,
    plot_training,
    reference_info,
    save_image_grid,
    start_run,
    write_report,
)

SQRT2 = math.sqrt(2.0)


class EqualLinear(nn.Module):
    """FC layer with equalised learning rate (weights ~ N(0, 1/lr_mul^2), scaled at runtime)."""

    def __init__(self, n_in: int, n_out: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 act: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / lr_mul)
        self.bias = nn.Parameter(torch.full((n_out,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(n_in)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, 0.2) * SQRT2 if self.act else out


class MappingNetwork(nn.Module):
    """``z [B,z_dim] -> w [B,w_dim]``: pixel-norm then ``depth`` leaky-ReLU FC layers."""

    def __init__(self, z_dim: int, w_dim: int, depth: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * depth
        self.layers = nn.Sequential(*[EqualLinear(a, b, lr_mul=lr_mul, act=True)
                                      for a, b in zip(dims[:-1], dims[1:])])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        return self.layers(z)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) conv, one grouped conv for the batch.

    ``x [B,C_in,H,W]``, ``w [B,w_dim]`` -> ``[B,C_out,H,W]``. Style ``s = A(w)`` (bias init 1);
    ``W'_bij = s_bj W_ij``; demod: ``W''_bij = W'_bij / sqrt(sum_jk W'_bijk^2 + eps)``, so unit-
    variance inputs give unit-variance outputs (paper eq. 1-3).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int,
                 demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.scale = 1.0 / math.sqrt(c_in * kernel * kernel)
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)
        self.demodulate = demodulate
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, c_in, h, wd = x.shape
        s = self.affine(w)  # [B,C_in]
        weight = self.weight[None] * self.scale * s[:, None, :, None, None]  # [B,O,I,k,k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        weight = weight.reshape(-1, c_in, *weight.shape[3:])
        out = F.conv2d(x.reshape(1, b * c_in, h, wd), weight, padding=self.padding, groups=b)
        return out.reshape(b, -1, h, wd)


class StyledLayer(nn.Module):
    """Modulated 3x3 conv + per-layer noise (learned strength) + bias + leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.upsample = upsample

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: bool) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if noise:
            x = x + self.noise_strength * torch.randn_like(x[:, :1])
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB."""

    def __init__(self, c_in: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, 1, 1)


class StyleGenerator(nn.Module):
    """StyleGAN2-style G: ``z [B,z_dim]`` (or ``ws [B,num_ws,w_dim]``, W+) -> ``[B,3,S,S]``.

    Layer ``i`` of the ``num_ws = 2*log2(S/4) + 2`` codes drives conv ``i``; the to-RGB after
    conv ``i`` uses code ``i + 1`` (as in the paper's W+ layout).
    """

    def __init__(self, resolution: int, z_dim: int = 64, w_dim: int = 64, mapping_layers: int = 2,
                 channels: int = 64, mapping_lr_mul: float = 0.01) -> None:
        super().__init__()
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
        n_blocks = int(math.log2(resolution // 4))
        self.layers = nn.ModuleList([StyledLayer(channels, channels, w_dim)])
        self.to_rgbs = nn.ModuleList([ToRGB(channels, w_dim)])
        for _ in range(n_blocks):
            self.layers.append(StyledLayer(channels, channels, w_dim, upsample=True))
            self.layers.append(StyledLayer(channels, channels, w_dim))
            self.to_rgbs.append(ToRGB(channels, w_dim))
        self.num_ws = len(self.layers) + 1
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def mix(self, z1: torch.Tensor, z2: torch.Tensor | None = None,
            crossover: int | None = None, psi: float = 1.0) -> torch.Tensor:
        """W+ codes ``[B,num_ws,w_dim]``: ``w(z1)`` before layer ``crossover``, ``w(z2)`` from it
        on (style mixing); truncated towards ``w_avg`` by ``psi``."""
        w1 = self.mapping(z1)
        ws = w1[:, None].repeat(1, self.num_ws, 1)
        if z2 is not None and crossover is not None:
            ws[:, crossover:] = self.mapping(z2)[:, None]
        return self.w_avg + psi * (ws - self.w_avg)

    def synthesis(self, ws: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """``ws [B,num_ws,w_dim]`` -> images ``[B,3,S,S]``; ``noise=False``: deterministic."""
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        x = self.layers[0](x, ws[:, 0], noise)
        rgb = self.to_rgbs[0](x, ws[:, 1])
        for k in range(1, len(self.to_rgbs)):
            i = 2 * k - 1
            x = self.layers[i](x, ws[:, i], noise)
            x = self.layers[i + 1](x, ws[:, i + 1], noise)
            rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = rgb + self.to_rgbs[k](x, ws[:, i + 2])
        return rgb

    def forward(self, z: torch.Tensor, psi: float = 1.0, noise: bool = True) -> torch.Tensor:
        return self.synthesis(self.mix(z, psi=psi), noise)


class DBlock(nn.Module):
    """Residual D block: two 3x3 convs + 2x average-pool, 1x1 skip, sum / sqrt(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv2(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / SQRT2


class ResidualDiscriminator(nn.Module):
    """``[B,3,S,S] -> [B]`` logits: from-RGB, residual blocks down to 4x4, minibatch-stddev
    (groups of up to 4), conv, two FC layers."""

    def __init__(self, resolution: int, channels: int = 64, group: int = 4) -> None:
        super().__init__()
        self.from_rgb = nn.Conv2d(3, channels, 1)
        n = int(math.log2(resolution // 4))
        self.blocks = nn.Sequential(*[DBlock(channels, channels) for _ in range(n)])
        self.group = group
        self.conv = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.fc = nn.Linear(channels * 16, channels)
        self.out = nn.Linear(channels, 1)

    def minibatch_stddev(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = min(self.group, b)
        while b % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))  # [B/g]
        y = y.repeat(g).reshape(b, 1, 1, 1).expand(b, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.leaky_relu(self.from_rgb(x), 0.2))
        x = F.leaky_relu(self.conv(self.minibatch_stddev(x)), 0.2)
        return self.out(F.leaky_relu(self.fc(x.flatten(1)), 0.2)).squeeze(1)


def build_generator(cfg) -> StyleGenerator:
    m = cfg.model
    return StyleGenerator(cfg.data.image_size, m.z_dim, m.w_dim, m.mapping_layers, m.channels,
                          m.mapping_lr_mul)


class StyleGAN(pl.LightningModule):
    """G, G_ema and D with manual optimisation: one D step (lazy R1) then one G step a batch."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        self.generator = build_generator(cfg)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        self.discriminator = ResidualDiscriminator(cfg.data.image_size, cfg.model.channels)
        self.register_buffer("d_steps", torch.zeros((), dtype=torch.long))
        self._d_count = 0

    def on_train_start(self) -> None:
        self._d_count = int(self.d_steps)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        policy = self.cfg.loss.diffaugment
        return diff_augment(x, policy) if policy else x

    def fake(self, n: int) -> torch.Tensor:
        """Generated faces with style mixing at ``model.mixing_prob``; updates ``w_avg``."""
        g = self.generator
        z1 = torch.randn(n, g.z_dim, device=self.device)
        if random.random() < self.cfg.model.mixing_prob:
            ws = g.mix(z1, torch.randn_like(z1), random.randint(1, g.num_ws - 1))
        else:
            ws = g.mix(z1)
        with torch.no_grad():
            g.w_avg.lerp_(ws[:, 0].mean(0), 1.0 - self.cfg.model.w_avg_beta)
        return g.synthesis(ws)

    def training_step(self, batch, batch_idx: int) -> None:
        real = batch[0]
        opt_g, opt_d = self.optimizers()
        lo = self.cfg.loss
        r1 = lo.r1_gamma * lo.r1_every if self._d_count % lo.r1_every == 0 else 0.0
        self._d_count += 1
        self.d_steps += 1
        with torch.no_grad():
            fake = self.fake(real.shape[0])

        def critic(x: torch.Tensor) -> torch.Tensor:
            return self.discriminator(self.augment(x))

        d_loss = critic_loss("nonsaturating", critic, real, fake, r1_weight=r1)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        g_loss = generator_step(
            opt_g, lambda: generator_loss("nonsaturating", critic(self.fake(real.shape[0]))),
            [self.discriminator], backward=self.manual_backward)
        self.update_ema()
        self.log_dict({"train/d_loss": d_loss.detach(), "train/g_loss": g_loss}, prog_bar=True)

    @torch.no_grad()
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` faces ``[n,3,S,S]`` in [-1, 1] from the EMA generator (psi 1, no mixing)."""
        g = self.generator_ema
        z = torch.randn(n, g.z_dim, generator=generator).to(self.device)
        return g(z)

    def update_ema(self) -> None:
        beta = self.cfg.model.ema_beta
        for pe, p in zip(self.generator_ema.parameters(), self.generator.parameters()):
            pe.lerp_(p, 1.0 - beta)
        for be, b in zip(self.generator_ema.buffers(), self.generator.buffers()):
            be.copy_(b)

    def configure_optimizers(self):
        o = self.cfg.optim
        kw = {"lr": o.lr, "betas": (o.beta1, o.beta2)}
        return [torch.optim.Adam(self.generator.parameters(), **kw),
                torch.optim.Adam(self.discriminator.parameters(), **kw)]


def _faces(cfg):
    from downstream.facegan import face_dataset
    return face_dataset(cfg)


@torch.no_grad()
def sample_grids(g: StyleGenerator, run, seed: int, psis) -> list[str]:
    """Sample, truncation and style-mixing grids from ``g`` (the EMA generator)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(32, g.z_dim, generator=gen)
    imgs = g(z)
    save_image_grid([list(imgs[r * 8:(r + 1) * 8]) for r in range(4)], [],
                    run / "plots" / "samples.png", caption="EMA generator samples (psi=1)")
    rows = [list(g(z[:8], psi=float(p), noise=False)) for p in psis]
    save_image_grid(rows, [], run / "plots" / "truncation.png",
                    caption="rows: truncation psi = " + ", ".join(str(p) for p in psis))
    src, dst = z[:6], z[6:12]
    cross = g.num_ws // 2
    rows = [[torch.zeros(3, g.resolution, g.resolution)] + list(g(dst, noise=False))]
    for i in range(len(src)):
        a = src[i:i + 1].expand(len(dst), -1)
        mixed = g.synthesis(g.mix(a, dst, cross), noise=False)
        rows.append([g(src[i:i + 1], noise=False)[0]] + list(mixed))
    save_image_grid(rows, [], run / "plots" / "style_mixing.png",
                    caption=f"coarse layers (<{cross}) from column 1, fine from top row")
    return ["samples.png", "truncation.png", "style_mixing.png"]


def run_stylegan(cfg, encoder_spec: str, run_dir: str) -> dict:
    """Train (or resume) the StyleGAN, measure KID/FD with G_ema, write grids and the report."""
    from pathlib import Path

    d = cfg.data
    pl.seed_everything(cfg.seed, workers=True)
    random.seed(cfg.seed)
    encoder = load_task_encoder(encoder_spec, task_size=d.image_size, what="face crops",
                                size_key="data.image_size", resize=d.resize_to_encoder,
                                seed=cfg.seed)
    faces = _faces(cfg)
    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    if (Path(run_dir) / "report.json").exists() and not cfg.trainer.resume:
        raise UserError(f"{run_dir} already holds a finished run: pass trainer.resume=true to "
                        "continue it, or choose a new --out")
    if cfg.trainer.resume and not ckpt.is_file():
        raise UserError(f"trainer.resume=true but {ckpt} does not exist")
    run = start_run(run_dir, cfg, resume=cfg.trainer.resume)
    model = StyleGAN(cfg)
    loader = DataLoader(faces, batch_size=min(d.batch_size, len(faces)), shuffle=True,
                        drop_last=len(faces) > d.batch_size, num_workers=d.num_workers)
    trainer = make_trainer(cfg, run, 2)
    import time
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader,
                ckpt_path=str(ckpt) if cfg.trainer.resume else None, weights_only=True)
    seconds = time.perf_counter() - start
    if cfg.trainer.save_checkpoint:
        trainer.save_checkpoint(ckpt)
    steps = int(model.d_steps)
    from downstream.facegan import evaluate  # the scoring every face generator shares

    if cfg.metrics.ref_encoder is None:  # the --encoder is the reference space
        cfg.metrics.ref_encoder = encoder_spec
    metrics, _, _ = evaluate(model, faces, cfg, eval_device(cfg))
    g = model.generator_ema.cpu()
    plots = plot_training(run, {"loss": ("train/d_loss", "train/g_loss")})
    plots += sample_grids(g, run, cfg.seed + 3, cfg.metrics.truncation)
    report = {
        "task": "stylegan",
        "encoder": encoder_info(encoder_spec, encoder, frozen=True),
        "generator": {"resolution": g.resolution, "z_dim": g.z_dim, "w_dim": g.w_dim,
                      "num_ws": g.num_ws, "mapping_layers": cfg.model.mapping_layers,
                      "channels": cfg.model.channels,
                      "params": sum(p.numel() for p in g.parameters())},
        "data": {"root": str(faces.root), "images": len(faces), "image_size": d.image_size},
        "budget": {"steps": steps, "seconds": round(seconds, 2), "batch_size": d.batch_size,
                   "images_seen": steps * d.batch_size, "resumed": bool(cfg.trainer.resume)},
        "metrics": metrics,
        "reference": reference_info(cfg.metrics),
        "plots": plots,
    }
    notes = ["kid/fd: generated (EMA G, psi=1) vs real faces in the reference encoder's features "
             "(metrics.ref_encoder, default the --encoder; KID: torchmetrics; FD in a PCA space "
             "of the real features); not Inception, scored as `downstream gan` scores a DCGAN.",
             "kid_real/fd_real: two disjoint real sets of the same size (the floor)."]
    if report["reference"]["random"]:
        notes.append(RANDOM_REF_NOTE)
    return write_report(run, report, "StyleGAN2-style face generator", notes)
