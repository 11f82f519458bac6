"""A trained face model as a part of the cloze model: ``downstream cloze
model.face_latent=bigan|vae`` (the roadmap's "separate encoding of the face") and
``model.decoder=stylegan``.

- :func:`load_face_model` reads a face-model run folder (``model.face_model``): a ``downstream
  bigan`` run for ``face_latent=bigan``, a ``vaegan`` or ``introvae`` run for ``face_latent=vae``,
  a ``stylegan`` run for ``decoder=stylegan``. It rebuilds the model from the run's
  ``config.yaml`` and ``report.json`` (the encoder's arch and input size) and loads
  ``checkpoints/last.ckpt`` (weights only, strict). A run of another task, or a face latent size
  or face side that does not match the cloze config, is a one-line UserError.
- The face model's encoder gives the *target latent* of the true face (BiGAN: ``E(x)``; VAE:
  ``mu(x)``), frozen; its generator decodes the cloze latent (frozen unless
  ``model.finetune_face_generator``).
- :class:`StyleDecoder`: the sequence latent ``z [B,L]`` through a StyleGAN2-style mapping
  network into W, broadcast to every layer, then the synthesis network (per-layer noise while
  training, none in eval), as the research code's global StyleGAN2 cloze model does.

Faces are ``[B,3,F,F]`` in [-1, 1]; latents ``[B,L]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from omegaconf import OmegaConf

from backbone_ssl.errors import UserError
from backbone_ssl.export import read_checkpoint, resolve_encoder
from downstream.stylegan import StyleGenerator

#: face_latent / decoder -> the run tasks that provide it
FACE_MODEL_TASKS = {"bigan": ("bigan",), "vae": ("vaegan", "introvae"), "stylegan": ("stylegan",)}


class Frozen(nn.Module):
    """A module kept frozen (no gradients to its weights, eval mode whatever ``.train()`` is
    called on the model around it); gradients still flow through it to its input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> Frozen:
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class LatentOf(nn.Module):
    """The target latent of a face model's encoder: ``[B,3,F,F] -> [B,L]`` (BiGAN: ``E(x)``;
    VAE: the posterior mean ``mu(x)``)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return out[0] if isinstance(out, tuple) else out


class StyleDecoder(nn.Module):
    """``z [B,L] -> [B,3,F,F]``: a :class:`~downstream.stylegan.StyleGenerator` whose mapping
    network takes the cloze latent (``z_dim = L``) into W; per-layer noise only in training."""

    def __init__(self, generator: StyleGenerator) -> None:
        super().__init__()
        self.net = generator
        self.latent_dim = generator.z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z, noise=self.training)


@dataclass
class FaceModel:
    """What the cloze model takes from a face-model run."""

    task: str
    run: Path
    latent_dim: int
    image_size: int
    generator: nn.Module  # z [B,L] -> [B,3,F,F]
    target: nn.Module | None  # [B,3,F,F] -> [B,L] (None for a stylegan run)

    def info(self) -> dict:
        return {"task": self.task, "run": str(self.run), "latent_dim": self.latent_dim,
                "image_size": self.image_size}


def _read_run(run: Path, what: str, tasks: tuple[str, ...]) -> dict:
    cfg_path, ckpt = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    want = " or ".join(f"`downstream {t}`" for t in tasks)
    if not cfg_path.is_file() or not ckpt.is_file():
        raise UserError(f"model.face_model={run} is not a finished face-model run (no "
                        f"config.yaml and checkpoints/last.ckpt): {what} needs a {want} run")
    raw = OmegaConf.to_container(OmegaConf.load(cfg_path))
    task = raw.get("task") if isinstance(raw, dict) else None
    if task not in tasks:
        raise UserError(f"model.face_model={run} is a '{task}' run: {what} needs a {want} run")
    return raw


def load_face_model(run_dir: str, kind: str, latent_dim: int, face_size: int) -> FaceModel:
    """The face model of ``run_dir`` for ``kind`` (``bigan`` | ``vae`` | ``stylegan``), checked
    against the cloze ``model.latent_dim`` and ``data.face_size``; UserError (one line) on a run
    of another task or a size that does not match."""
    from downstream.config import CONFIGS

    run = Path(run_dir)
    what = (f"model.face_latent={kind}" if kind != "stylegan" else "model.decoder=stylegan")
    raw = _read_run(run, what, FACE_MODEL_TASKS[kind])
    task = raw["task"]
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CONFIGS[task]), raw))
    size = int(cfg.data.image_size)
    face_latent = int(cfg.model.z_dim if task == "stylegan" else cfg.model.latent_dim)
    key = "model.z_dim" if task == "stylegan" else "model.latent_dim"
    if face_latent != latent_dim:
        raise UserError(f"face latent size: the cloze model.latent_dim={latent_dim} but the face "
                        f"model {run} has {key}={face_latent}: set model.latent_dim="
                        f"{face_latent}")
    if size != face_size:
        raise UserError(f"the face model {run} makes {size}px faces but the cloze "
                        f"data.face_size={face_size}: set data.face_size={size}")
    state = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    if task == "stylegan":
        from downstream.stylegan import build_generator

        g = build_generator(cfg)
        _load(g, state, "generator_ema.", run)
        return FaceModel(task, run, face_latent, size, StyleDecoder(g), None)
    model = _build_latent_model(task, cfg, run)
    _load(model, state, "", run)
    return FaceModel(task, run, face_latent, size, model.generator, LatentOf(model.encoder))


def _build_latent_model(task: str, cfg, run: Path) -> nn.Module:
    """The run's model with a placeholder encoder of its arch (the weights come from the
    checkpoint; mean/std from the run's report)."""
    report_path = run / "report.json"
    if not report_path.is_file():
        raise UserError(f"model.face_model={run} has no report.json (the run did not finish)")
    enc_info = json.loads(report_path.read_text()).get("encoder") or {}
    if "arch" not in enc_info or "input_size" not in enc_info:
        raise UserError(f"model.face_model={run}: report.json names no encoder arch")
    encoder = resolve_encoder(f"random:{enc_info['arch']}", input_size=int(enc_info["input_size"]))
    if enc_info.get("mean") and enc_info.get("std"):
        encoder.mean, encoder.std = tuple(enc_info["mean"]), tuple(enc_info["std"])
    if task == "bigan":
        from downstream.bigan import BiGAN as cls
    elif task == "vaegan":
        from downstream.vaegan import VAEGAN as cls
    else:
        from downstream.introvae import IntroVAE as cls
    return cls(cfg, encoder)


def _load(module: nn.Module, state: dict, prefix: str, run: Path) -> None:
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise UserError(f"model.face_model={run}: checkpoint does not fit its config (missing "
                        f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
