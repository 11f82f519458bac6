"""``downstream invert``: in-domain GAN inversion (Zhu et al., 2020, "In-Domain GAN Inversion for
Real Image Editing", https://arxiv.org/abs/2004.00049), written from the paper.

1. An encoder E (a timm backbone initialised from ``--encoder``, plus a linear head) maps a face
   to W+ ``[B,num_ws,w_dim]``; it is trained with the generator (EMA G of a ``downstream
   stylegan`` run) frozen: pixel MSE + perceptual loss in a frozen domain encoder's features
   (``loss.perceptual_encoder``; VGG cannot be downloaded) + the GAN's D as adversarial term.
2. Per image, domain-regularised optimisation: Adam over ``w`` from ``E(x)`` of
   pixel + perceptual + ``lambda * ||w - E(G(w))||^2``.
3. ``--mask box``: the same losses only outside a centred box; the hole is filled by G
   ("diffusion" in the paper) and scored against the mean-colour fill.

Held-out faces (``data.eval_images``, seeded) are never seen while training E.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file

from backbone_ssl.errors import UserError
from backbone_ssl.export import read_checkpoint
from backbone_ssl.nn.gan_losses import generator_loss
from backbone_ssl.nn.training import set_requires_grad
from downstream.encoder import EncoderInput, encoder_info, load_task_encoder
from downstream.metrics import image_quality
from downstream.runs import save_image_grid, seeded_indices, start_run, write_report
from downstream.stylegan import ResidualDiscriminator, StyleGenerator, build_generator
from downstream.stylegan_config import StyleGANConfig


def load_generator(run_dir: str) -> tuple[StyleGenerator, ResidualDiscriminator, StyleGANConfig]:
    """EMA G and D of a ``downstream stylegan`` run folder (frozen, eval); UserError otherwise."""
    run = Path(run_dir)
    cfg_path, ckpt = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    if not cfg_path.is_file() or not ckpt.is_file():
        raise UserError(f"--generator {run_dir} is not a `downstream stylegan` run folder "
                        "(needs config.yaml and checkpoints/last.ckpt)")
    raw = OmegaConf.load(cfg_path)
    if raw.get("task") != "stylegan":
        raise UserError(f"--generator {run_dir} is a '{raw.get('task')}' run, not a stylegan "
                        "run")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StyleGANConfig), raw))
    state = read_checkpoint(ckpt)["state_dict"]
    g = build_generator(cfg)
    g.load_state_dict({k[len("generator_ema."):]: v for k, v in state.items()
                       if k.startswith("generator_ema.")})
    d = ResidualDiscriminator(cfg.data.image_size, cfg.model.channels)
    d.load_state_dict({k[len("discriminator."):]: v for k, v in state.items()
                       if k.startswith("discriminator.")})
    for m in (g, d):
        set_requires_grad(m, False)
        m.eval()
    return g, d, cfg


class LatentEncoder(nn.Module):
    """E: ``[B,3,S,S]`` in [-1, 1] -> W+ ``[B,num_ws,w_dim]``; backbone + linear head whose bias
    starts at ``w_avg`` (so E starts at the average face)."""

    def __init__(self, feats: EncoderInput, num_ws: int, w_dim: int, w_avg: torch.Tensor) -> None:
        super().__init__()
        self.feats = feats
        self.num_ws, self.w_dim = num_ws, w_dim
        self.head = nn.Linear(feats.num_features, num_ws * w_dim)
        nn.init.normal_(self.head.weight, std=0.01)
        with torch.no_grad():
            self.head.bias.copy_(w_avg.repeat(num_ws))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feats(x)).view(-1, self.num_ws, self.w_dim)


def perceptual(feats: EncoderInput, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]`` squared distance of L2-normalised domain-encoder features."""
    fa, fb = F.normalize(feats(a), dim=1), F.normalize(feats(b), dim=1)
    return (fa - fb).pow(2).sum(1)


def box_mask(size: int, fraction: float) -> torch.Tensor:
    """``[1,1,S,S]`` with 1 inside a centred box of side ``fraction * S`` (the hole)."""
    side = max(1, int(round(fraction * size)))
    if side >= size:
        raise UserError(f"mask.box_fraction={fraction} covers the whole {size}px image")
    m = torch.zeros(1, 1, size, size)
    o = (size - side) // 2
    m[..., o:o + side, o:o + side] = 1.0
    return m


def optimise_latents(g: StyleGenerator, enc: LatentEncoder, feats: EncoderInput,
                     x: torch.Tensor, w0: torch.Tensor, steps: int, lr: float, lam: float,
                     keep: torch.Tensor | None = None, pw: float = 1.0) -> torch.Tensor:
    """Domain-regularised optimisation: Adam over ``w [B,num_ws,w_dim]`` from ``w0`` of
    ``||keep*(G(w)-x)||^2 + pw*perc(keep*G(w), keep*x) + lam*||w - E(G(w))||^2`` per image
    (``keep``: 1 where the loss counts, default everywhere). Returns the optimised ``w``."""
    keep = torch.ones_like(x[:, :1]) if keep is None else keep
    w = w0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        rec = g.synthesis(w, noise=False)
        loss = ((rec - x) * keep).pow(2).mean((1, 2, 3))
        loss = loss + pw * perceptual(feats, rec * keep, x * keep)
        if lam > 0:
            loss = loss + lam * (w - enc(rec)).pow(2).mean((1, 2))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return w.detach()


@torch.no_grad()
def domain_gap(g: StyleGenerator, enc: LatentEncoder, w: torch.Tensor) -> float:
    """Mean ``||w - E(G(w))||^2`` (per element)."""
    return float((w - enc(g.synthesis(w, noise=False))).pow(2).mean())


def _quality(feats, rec, x, hole=None) -> dict[str, float]:
    if hole is not None:
        ys, xs = torch.nonzero(hole[0, 0], as_tuple=True)
        sl = (..., slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        q = image_quality(rec[sl], x[sl])
        return {"hole_psnr": q["psnr"], "hole_ssim": q["ssim"]}
    q = image_quality(rec, x)
    with torch.no_grad():
        q["perceptual"] = float(perceptual(feats, rec, x).mean())
    return {k: q[k] for k in ("psnr", "ssim", "perceptual")}


@contextlib.contextmanager
def seeded_run(cfg) -> Iterator[None]:
    """Seed every RNG a run touches (torch, numpy, python) and, with
    ``trainer.deterministic=true``, ask torch for deterministic algorithms for the run's duration
    (the caller's setting is restored after, so a library call does not change the process);
    identical runs then train identical E weights (on the same machine and thread count)."""
    import pytorch_lightning as pl

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def run_invert(cfg, encoder_spec: str, run_dir: str) -> dict:
    """Train E with G frozen, invert held-out faces (E only, then optimised), write the report."""
    if not cfg.generator:
        raise UserError("downstream invert needs --generator RUN (a `downstream stylegan` run)")
    with seeded_run(cfg):
        return _run_invert(cfg, encoder_spec, run_dir)


def _run_invert(cfg, encoder_spec: str, run_dir: str) -> dict:
    from downstream.facegan import face_dataset

    g, d_net, gcfg = load_generator(cfg.generator)
    size = gcfg.data.image_size
    kw = {"task_size": size, "what": "generator images", "size_key": "the generator's "
          "data.image_size", "resize": cfg.data.resize_to_encoder, "seed": cfg.seed}
    base = load_task_encoder(encoder_spec, **kw)
    pspec = cfg.loss.perceptual_encoder or encoder_spec
    pfeats = EncoderInput(load_task_encoder(pspec, **kw), resize=cfg.data.resize_to_encoder)
    trainable = copy.copy(base)
    trainable.module = copy.deepcopy(base.module)
    enc = LatentEncoder(EncoderInput(trainable, finetune=True, resize=cfg.data.resize_to_encoder),
                        g.num_ws, g.w_dim, g.w_avg)
    hole = box_mask(size, cfg.mask.box_fraction) if cfg.mask.kind == "box" else None
    keep = None if hole is None else 1.0 - hole

    data_cfg = copy.deepcopy(gcfg)
    data_cfg.data.path, data_cfg.data.max_images = cfg.data.path, cfg.data.max_images
    faces = face_dataset(data_cfg)
    n_eval = min(cfg.data.eval_images, len(faces) // 2)
    eval_idx = seeded_indices(len(faces), n_eval, cfg.seed + 7)
    train_idx = [i for i in range(len(faces)) if i not in set(eval_idx)]
    run = start_run(run_dir, cfg)

    opt = torch.optim.Adam(enc.parameters(), lr=cfg.optim.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    lo = cfg.loss
    start = time.perf_counter()
    enc.train()
    for _ in range(cfg.trainer.max_steps):
        pick = torch.randint(len(train_idx), (cfg.data.batch_size,), generator=gen)
        x = torch.stack([faces[train_idx[int(i)]][0] for i in pick])
        rec = g.synthesis(enc(x), noise=False)
        loss = (rec - x).pow(2).mean() + lo.perceptual_weight * perceptual(pfeats, rec, x).mean()
        if lo.adv_weight > 0:
            loss = loss + lo.adv_weight * generator_loss("nonsaturating", d_net(rec))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    e_seconds = time.perf_counter() - start
    enc.eval()
    set_requires_grad(enc, False)
    (run / "checkpoints").mkdir(exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in enc.state_dict().items()},
              str(run / "checkpoints" / "latent_encoder.safetensors"))

    x = torch.stack([faces[i][0] for i in eval_idx])
    x_in = x
    fill = None
    if hole is not None:
        mean_col = (x * keep).sum((2, 3), keepdim=True) / keep.sum()
        fill = x * keep + mean_col * hole
        x_in = fill
    with torch.no_grad():
        w_e = enc(x_in)
        rec_e = g.synthesis(w_e, noise=False)
    start = time.perf_counter()
    w_o = optimise_latents(g, enc, pfeats, x, w_e, cfg.optimise.steps, cfg.optimise.lr,
                           lo.domain_weight, keep, lo.perceptual_weight)
    o_seconds = time.perf_counter() - start
    with torch.no_grad():
        rec_o = g.synthesis(w_o, noise=False)
    metrics = {}
    for name, rec in (("e_only", rec_e), ("optimised", rec_o)):
        for k, v in _quality(pfeats, rec, x).items():
            metrics[f"{name}_{k}"] = v
        if hole is not None:
            comp = x * keep + rec * hole
            for k, v in _quality(pfeats, comp, x, hole).items():
                metrics[f"{name}_{k}"] = v
    if hole is not None:
        for k, v in _quality(pfeats, fill, x, hole).items():
            metrics[f"mean_fill_{k}"] = v
    metrics["domain_gap_e_only"] = domain_gap(g, enc, w_e)
    metrics["domain_gap_optimised"] = domain_gap(g, enc, w_o)
    metrics["eval_images"] = n_eval
    rows = [list(x[:8]), list(rec_e[:8]), list(rec_o[:8])]
    titles = "rows: input, E only, optimised"
    if hole is not None:
        rows = [list(x[:8]), list(fill[:8]), list((x * keep + rec_e * hole)[:8]),
                list((x * keep + rec_o * hole)[:8])]
        titles = "rows: input, mean fill, E only (hole), optimised (hole)"
    save_image_grid(rows, [], run / "plots" / "reconstructions.png", caption=titles)
    report = {
        "task": "invert",
        "encoder": encoder_info(encoder_spec, base, frozen=False),
        "perceptual_encoder": pspec,
        "generator": str(cfg.generator),
        "mask": {"kind": cfg.mask.kind, "box_fraction": cfg.mask.box_fraction},
        "data": {"root": str(faces.root), "images": len(faces), "eval_images": n_eval,
                 "image_size": size},
        "budget": {"steps": cfg.trainer.max_steps, "seconds": round(e_seconds + o_seconds, 2),
                   "e_seconds": round(e_seconds, 2), "optimise_steps": cfg.optimise.steps,
                   "optimise_seconds": round(o_seconds, 2), "batch_size": cfg.data.batch_size,
                   "lambda": lo.domain_weight, "threads": torch.get_num_threads()},
        "metrics": metrics,
        "plots": ["reconstructions.png"],
        "latent_encoder": "checkpoints/latent_encoder.safetensors",
    }
    notes = ["psnr/ssim/perceptual on held-out faces (never seen by E); perceptual = squared "
             "distance of L2-normalised features of the perceptual encoder."]
    return write_report(run, report, "In-domain GAN inversion", notes)
