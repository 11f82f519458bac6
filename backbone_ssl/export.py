"""Save and load frozen encoders.

An exported encoder is a timm model folder, as ``timm.models.save_for_hf(...,
safe_serialization=True)`` writes it: ``model.safetensors`` (the backbone under timm's own key
names, no classifier) and ``config.json`` whose ``pretrained_cfg`` holds ``input_size``, ``mean``
and ``std``, plus a ``backbone_ssl`` block (method, data, steps, toolkit_version, created, sha256 of
model.safetensors). Nothing is ever unpickled from a user file: weights are read with safetensors,
training checkpoints with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import save_for_hf

from backbone_ssl import __version__
from backbone_ssl.backbones import check_arch, create_backbone
from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.errors import UserError

log = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class Encoder:
    """A frozen encoder and the preprocessing it expects.

    ``module`` maps a normalised ``[B,3,H,W]`` batch (``H=W=input_size``) to ``[B,num_features]``;
    it is in eval mode with ``requires_grad=False``.
    """

    module: nn.Module
    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.module.num_features)

    @property
    def name(self) -> str:
        """Short label for tables: the method it was pretrained with, or 'random'."""
        return str(self.meta.get("method", "encoder"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no gradients; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` onto ``final`` (the old one, if any, removed after)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_encoder(
    backbone: nn.Module,
    arch: str,
    out_dir: str | os.PathLike,
    *,
    input_size: int,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``backbone`` (a timm model with ``num_classes=0``) as a timm model folder, atomically.

    The folder is written beside ``out_dir`` under a temporary name and renamed into place, so a
    kill never leaves a half-written encoder.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = backbone
        if getattr(model, "num_classes", 0):
            model = copy_without_classifier(model)
        data_config = {
            "input_size": (3, int(input_size), int(input_size)),
            "mean": tuple(float(m) for m in mean),
            "std": tuple(float(s) for s in std),
            "crop_pct": 1.0,
            "interpolation": "bicubic",
        }
        save_for_hf(model, str(tmp), safe_serialization=True, data_config=data_config)
        cfg_path = tmp / CONFIG_NAME
        config = json.loads(cfg_path.read_text())
        config["architecture"] = arch
        config["backbone_ssl"] = {
            **dict(meta or {}),
            "toolkit_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": sha256_file(tmp / WEIGHTS_NAME),
        }
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
        _share_modes(tmp)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _share_modes(folder: Path) -> None:
    """mkdtemp makes 0700 folders: give the export the usual umask modes (0755 / 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def copy_without_classifier(model: nn.Module) -> nn.Module:
    """A copy of a timm model with its classifier removed (``reset_classifier(0)``)."""
    import copy

    clone = copy.deepcopy(model)
    clone.reset_classifier(0)
    return clone


def read_encoder_config(enc_dir: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of an encoder folder (UserError when missing or unparsable)."""
    path = Path(enc_dir) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"not an encoder folder: {enc_dir} has no {CONFIG_NAME} "
                        "(export one with `backbone-ssl export CHECKPOINT --out DIR`)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot parse {path}: {exc}") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file; a file that is not one (e.g. a pickle) is refused."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a valid safetensors file ({str(exc).splitlines()[0]}); "
            "only safetensors weights are loaded, never pickles"
        ) from None


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names missing/unexpected/mis-shaped keys in a UserError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shape:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shape:
            parts.append(f"shape mismatch: {few(shape)}")
        raise UserError(f"weights in {source} do not fit this architecture; " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def load_encoder_bundle(enc_dir: str | os.PathLike, *, verify: bool = True) -> Encoder:
    """Load an exported encoder folder as an :class:`Encoder` (hash checked, frozen)."""
    enc_dir = Path(enc_dir)
    config = read_encoder_config(enc_dir)
    weights = enc_dir / WEIGHTS_NAME
    if not weights.is_file():
        raise UserError(f"encoder folder {enc_dir} has no {WEIGHTS_NAME}")
    block = config.get("backbone_ssl", {})
    if not isinstance(block, dict):
        block = {}
    if verify and not block.get("sha256"):
        log.warning("unverified weights: %s has no sha256 in its backbone_ssl block, so %s "
                    "cannot be checked for changes or truncation", enc_dir / CONFIG_NAME,
                    WEIGHTS_NAME)
    if verify and block.get("sha256") and sha256_file(weights) != block["sha256"]:
        raise UserError(
            f"sha256 of {weights} does not match config.json: the weights were changed or "
            "truncated; re-export the encoder"
        )
    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise UserError(f"{enc_dir / CONFIG_NAME} names no architecture")
    check_arch(arch)
    model_args = {k: v for k, v in config.get("model_args", {}).items() if k != "num_classes"}
    model = create_backbone(arch, **model_args)
    load_state_strict(model, read_safetensors(weights), str(weights))
    pcfg = config.get("pretrained_cfg", {})
    size = int(pcfg.get("input_size", (3, 224, 224))[-1])
    return Encoder(
        module=freeze(model), arch=arch, input_size=size,
        mean=tuple(pcfg.get("mean", DEFAULT_MEAN)), std=tuple(pcfg.get("std", DEFAULT_STD)),
        meta=dict(block),
    )


def load_encoder(enc_dir: str | os.PathLike, *, verify: bool = True) -> nn.Module:
    """A frozen module in eval mode mapping a normalised ``[B,3,H,W]`` batch to
    ``[B,num_features]``; checks the sha256 and refuses mismatched architectures."""
    return load_encoder_bundle(enc_dir, verify=verify).module


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint read with ``weights_only=True`` (pickled code is refused)."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # UnpicklingError, RuntimeError(zip), ...
        # torch's own message advises weights_only=False, which would run the file's code:
        # never quote it; say what the file is not
        raise UserError(
            f"refusing to load {path}: not a weights-only checkpoint ({describe_load_error(exc)});"
            " backbone-ssl never unpickles objects or code from a file"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path} is not a backbone-ssl training checkpoint (no state_dict)")
    return ckpt


def describe_load_error(exc: BaseException) -> str:
    """A short, safe reason for a failed ``torch.load(weights_only=True)`` (torch's message is
    not quoted: it suggests ``weights_only=False``)."""
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text.lower():
        return "it holds pickled objects beyond tensors and plain containers"
    if "zip" in text.lower() or "magic number" in text.lower() or isinstance(exc, EOFError):
        return "not a torch checkpoint file, or truncated"
    return type(exc).__name__


def checkpoint_config(ckpt: Mapping[str, Any], path: str | os.PathLike) -> dict:
    """The run config stored in a checkpoint's hyper-parameters."""
    cfg = ckpt.get("hyper_parameters", {}).get("config")
    if not isinstance(cfg, dict):
        raise UserError(f"{path} holds no backbone-ssl config (was it written by backbone-ssl?)")
    return cfg


def checkpoint_network(cfg: Mapping[str, Any], network: str | None,
                       path: str | os.PathLike) -> tuple[str, str]:
    """``(network, state-dict prefix)`` of the backbone to read from a checkpoint of ``cfg``.

    ``network`` (``teacher`` | ``student``; default the run's ``export.network``, else the
    method's default) must be one the method has (UserError otherwise). A checkpoint of a method
    this toolkit does not register holds one network: ``backbone.``.
    """
    from backbone_ssl.methods import METHODS

    cls = METHODS.get(str(cfg.get("method", "")))
    if cls is None:
        if network not in (None, "student"):
            raise UserError(f"{path}: method '{cfg.get('method')}' has no '{network}' network")
        return "student", "backbone."
    if network is None:
        network = (cfg.get("export") or {}).get("network") or cls.config_cls().export.network
    return network, cls.network_attr(network, where=f"--network for {path}") + "."


def backbone_from_checkpoint(path: str | os.PathLike, network: str | None = None) -> Encoder:
    """The backbone of ``network`` (default: the run's ``export.network``, e.g. DINO's teacher)
    in a training checkpoint, as a frozen :class:`Encoder`."""
    ckpt = read_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    arch = cfg["model"]["arch"]
    network, prefix = checkpoint_network(cfg, network, path)
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise UserError(f"{path} has no '{prefix}*' weights")
    model = create_backbone(arch)
    load_state_strict(model, state, str(path))
    return Encoder(
        module=freeze(model), arch=arch, input_size=int(cfg["data"]["image_size"]),
        mean=DEFAULT_MEAN, std=DEFAULT_STD,
        meta={"method": cfg.get("method", ""), "data": cfg["data"].get("path"),
              "steps": int(ckpt.get("global_step", 0)), "network": network},
    )


def random_encoder(arch: str, input_size: int = 64, seed: int = 0) -> Encoder:
    """A randomly initialised (frozen) encoder: the baseline beside every evaluation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_backbone(arch)
    return Encoder(module=freeze(model), arch=arch, input_size=input_size, mean=DEFAULT_MEAN,
                   std=DEFAULT_STD, meta={"method": "random", "steps": 0})


def resolve_encoder(spec: str, *, input_size: int | None = None, seed: int = 0,
                    network: str | None = None) -> Encoder:
    """``ENC`` on the command line: an encoder folder, a training checkpoint, or ``random:<arch>``.

    ``network`` (``teacher`` | ``student``) picks the backbone of a training checkpoint (default:
    its ``export.network``); anything else already is one network, so a ``network`` is refused.

    ``input_size`` applies to ``random:`` encoders (default 64) and to ``pixels`` (default 32);
    ``pixels:S`` is the raw-pixel baseline at ``S`` px (:mod:`backbone_ssl.evaluation.pixels`).
    """
    from backbone_ssl.evaluation.pixels import parse_pixels_spec, pixel_encoder

    path = Path(spec)
    if network is not None and not (path.is_file() and path.suffix != ".safetensors"):
        raise UserError(f"--network {network} picks a network of a training checkpoint; "
                        f"{spec} is not one")
    pixel_size = parse_pixels_spec(spec, input_size)
    if pixel_size is not None:
        return pixel_encoder(pixel_size)
    if spec.startswith("random:"):
        arch = spec.split(":", 1)[1]
        check_arch(arch)
        return random_encoder(arch, input_size or 64, seed)
    if path.is_dir():
        return load_encoder_bundle(path)
    if path.is_file():
        if path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file():
            return load_encoder_bundle(path.parent)
        if path.suffix == ".safetensors":
            read_safetensors(path)  # refuses non-safetensors with a clear line
            raise UserError(f"{path} has no {CONFIG_NAME} beside it; pass the encoder folder")
        return backbone_from_checkpoint(path, network)
    raise UserError(
        f"encoder not found: {spec} (give an exported encoder folder, a .ckpt, random:<arch> "
        "or pixels[:S])"
    )


def export_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike,
                      network: str | None = None) -> Path:
    """``backbone-ssl export CHECKPOINT --out DIR [--network teacher|student]`` (timm format);
    ``network`` defaults to the run's ``export.network``."""
    enc = backbone_from_checkpoint(ckpt_path, network)
    return export_encoder(enc.module, enc.arch, out_dir, input_size=enc.input_size,
                          mean=enc.mean, std=enc.std, meta=enc.meta)
