"""``backbone-ssl export CKPT --format ssupergan``: an EfficientNet encoder in
efficientnet_pytorch's key layout, the one SSuperGAN's CNN embedder
(``EfficientNet.from_pretrained(...)``) uses.

Only timm's ``tf_efficientnet_b0..b7`` match efficientnet_pytorch exactly (TF-style "same"
padding, BN eps 1e-3): their parameters and buffers line up one to one in state-dict order
(``num_batches_tracked`` aside) with efficientnet_pytorch's ``_conv_stem``, ``_bn0``,
``_blocks.N.*``, ``_conv_head``, ``_bn1``. efficientnet_pytorch's ``_fc`` classifier has no
counterpart in an encoder and is left out (SSuperGAN trains it as its embedding layer).

Files written in ``OUT/``:

- ``efficientnet_bN.safetensors`` / ``.pth``: the bare efficientnet_pytorch state dict;
- ``ssupergan_embedder.safetensors`` / ``.pth``: keys ``seq_encoder.embedder.model.<key>``; the
  ``.pth`` wraps them as ``{"model_state_dict": {...}}`` (what SSuperGAN's
  ``torch.load(path)["model_state_dict"]`` reads); safetensors is flat, so it holds the keys alone;
- ``ssupergan.json``: arch, efficientnet_pytorch name, input size, normalisation and the
  conversion from SSuperGAN's [-1, 1] input;
- ``README.md``: the lines that load the weights into SSuperGAN's embedder.

Every ``.pth`` holds tensors only, so ``torch.load(path, weights_only=True)`` opens it.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file

from backbone_ssl.errors import UserError
from backbone_ssl.export import Encoder, resolve_encoder
from backbone_ssl.io import atomic_path, write_json_atomic, write_text_atomic

#: timm archs that map exactly onto efficientnet_pytorch (TF "same" padding).
_TF_EFFICIENTNET = re.compile(r"^tf_efficientnet_b([0-7])$")
#: key prefix of the embedder inside SSuperGAN's model (``seq_encoder.embedder.model``).
SSUPERGAN_PREFIX = "seq_encoder.embedder.model."
#: SSuperGAN feeds panels scaled to [-1, 1] (``Normalize(mean=0.5, std=0.5)``).
SSUPERGAN_MEAN = (0.5, 0.5, 0.5)
SSUPERGAN_STD = (0.5, 0.5, 0.5)
#: parameters of efficientnet_pytorch with no counterpart in an encoder (the classifier).
CLASSIFIER_PREFIX = "_fc."
NBT = "num_batches_tracked"


def efficientnet_variant(arch: str) -> str:
    """``tf_efficientnet_b3`` -> ``b3``; any other arch is refused with a UserError."""
    match = _TF_EFFICIENTNET.match(arch)
    if not match:
        raise UserError(
            f"--format ssupergan needs a tf_efficientnet_b0..b7 encoder, got '{arch}': only the "
            "TF-padded timm EfficientNets match efficientnet_pytorch (timm's efficientnet_b* pad "
            "symmetrically); pretrain with model.arch=tf_efficientnet_b0 or use --format timm"
        )
    return f"b{match.group(1)}"


def _reference_state(variant: str, input_size: int) -> OrderedDict[str, torch.Tensor]:
    """efficientnet_pytorch's own state dict for ``efficientnet-<variant>`` (random init, no
    download), used for its key names and shapes."""
    try:
        from efficientnet_pytorch import EfficientNet
    except ImportError:
        raise UserError(
            "--format ssupergan needs efficientnet_pytorch for the key layout: "
            "pip install efficientnet-pytorch==0.7.1 (the [dev] extra)"
        ) from None
    model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=input_size)
    return model.state_dict()


def _module_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def to_efficientnet_pytorch(
    timm_state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    """Rename a timm ``tf_efficientnet_b*`` state dict into efficientnet_pytorch's keys.

    The two orders agree entry by entry once ``num_batches_tracked`` and the target's ``_fc.*``
    are left aside; every pair's shape is checked. ``num_batches_tracked`` buffers are then
    carried over module by module. Returns the target layout without ``_fc.*``.
    """
    src = [(k, v) for k, v in timm_state.items() if not k.endswith(NBT)]
    dst = [(k, v) for k, v in target.items()
           if not k.endswith(NBT) and not k.startswith(CLASSIFIER_PREFIX)]
    if len(src) != len(dst):
        raise UserError(f"cannot map encoder onto efficientnet_pytorch: {len(src)} tensors vs "
                        f"{len(dst)} expected (is it a tf_efficientnet of the same variant?)")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    module_map: dict[str, str] = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape or sk.rsplit(".", 1)[-1] != dk.rsplit(".", 1)[-1]:
            raise UserError(f"cannot map encoder onto efficientnet_pytorch: {sk} "
                            f"{tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv.detach().clone().contiguous()
        module_map[_module_of(dk)] = _module_of(sk)
    ordered: OrderedDict[str, torch.Tensor] = OrderedDict()
    for dk, dv in target.items():  # target order, num_batches_tracked included
        if dk.startswith(CLASSIFIER_PREFIX):
            continue
        if dk.endswith(NBT):
            sk = f"{module_map[_module_of(dk)]}.{NBT}"
            ordered[dk] = timm_state.get(sk, dv).detach().clone().contiguous()
        else:
            ordered[dk] = out[dk]
    return ordered


def _save_pth(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def normalisation_note(encoder: Encoder) -> dict:
    """What the weights expect and how to get there from SSuperGAN's [-1, 1] panels."""
    mean, std = tuple(encoder.mean), tuple(encoder.std)
    same = all(abs(a - b) < 1e-6 for a, b in zip(mean + std, SSUPERGAN_MEAN + SSUPERGAN_STD))
    if same:
        conversion = "none: the weights were trained on [-1, 1] input, as SSuperGAN feeds it"
    else:
        conversion = (f"x_encoder = ((x + 1) / 2 - mean) / std with mean={list(mean)}, "
                      f"std={list(std)}, for x in [-1, 1]; feeding [-1, 1] unchanged shifts "
                      "every activation")
    return {
        "weights_expect": {"range": "[0, 1] then (x - mean) / std", "mean": list(mean),
                           "std": list(std)},
        "ssupergan_feeds": {"range": "[-1, 1]", "mean": list(SSUPERGAN_MEAN),
                            "std": list(SSUPERGAN_STD)},
        "conversion": conversion,
        "conversion_needed": not same,
    }


def _readme(variant: str, encoder: Encoder, norm: dict) -> str:
    size = encoder.input_size
    conv = ""
    if norm["conversion_needed"]:
        conv = (
            "\nThe weights expect ImageNet-style normalisation, SSuperGAN feeds [-1, 1]. Convert "
            "the panels before the embedder:\n\n```python\n"
            f"mean = torch.tensor({norm['weights_expect']['mean']}).view(1, 3, 1, 1)\n"
            f"std = torch.tensor({norm['weights_expect']['std']}).view(1, 3, 1, 1)\n"
            "x = ((x + 1) / 2 - mean) / std   # x: [-1, 1] panels, [B*S, 3, H, W]\n```\n"
        )
    return f"""# SSuperGAN embedder weights (efficientnet-{variant})

Encoder `{encoder.arch}` ({encoder.name}, {encoder.meta.get('steps', '?')} steps) in
efficientnet_pytorch's key layout. Input size {size}x{size}. Files:

- `efficientnet_{variant}.safetensors` / `.pth`: bare efficientnet_pytorch state dict (no `_fc`);
- `ssupergan_embedder.safetensors` / `.pth`: keys `{SSUPERGAN_PREFIX}<key>`; the `.pth` is
  `{{"model_state_dict": {{...}}}}`;
- `ssupergan.json`: arch, input size, normalisation.

Load into SSuperGAN's embedder (`_fc`, the embedding layer SSuperGAN trains, stays as initialised;
the missing keys printed are exactly `_fc.weight` and `_fc.bias`):

```python
state = torch.load("efficientnet_{variant}.pth", weights_only=True)
print(model.seq_encoder.embedder.model.load_state_dict(state, strict=False))
```

or, for the whole SSuperGAN model:

```python
state = torch.load("ssupergan_embedder.pth", weights_only=True)["model_state_dict"]
result = model.load_state_dict(state, strict=False)  # the rest of SSuperGAN is not in the file
assert not result.unexpected_keys, result.unexpected_keys  # every embedder key found its place
```

efficientnet_pytorch's "same" padding is fixed when the model is built: build it for the size you
feed (`EfficientNet.from_name("efficientnet-{variant}", image_size={size})`); for any input side
divisible by 32 (SSuperGAN's default 224 included) the padding is the same.
{conv}"""


def export_ssupergan(source: str | os.PathLike, out: str | os.PathLike,
                     network: str | None = None) -> Path:
    """Write the SSuperGAN files for ``source`` (a training .ckpt or an exported encoder folder)
    into ``out``; returns ``out``. ``network`` picks a checkpoint's teacher or student."""
    encoder = resolve_encoder(str(source), network=network)
    variant = efficientnet_variant(encoder.arch)
    target = _reference_state(variant, encoder.input_size)
    state = to_efficientnet_pytorch(encoder.module.state_dict(), target)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"arch": encoder.arch, "efficientnet_pytorch": f"efficientnet-{variant}",
            "input_size": str(encoder.input_size)}
    bare = f"efficientnet_{variant}"
    _save_safetensors(state, out_dir / f"{bare}.safetensors", meta)
    _save_pth(dict(state), out_dir / f"{bare}.pth")
    wrapped = OrderedDict((SSUPERGAN_PREFIX + k, v) for k, v in state.items())
    _save_safetensors(wrapped, out_dir / "ssupergan_embedder.safetensors", meta)
    _save_pth({"model_state_dict": dict(wrapped)}, out_dir / "ssupergan_embedder.pth")
    norm = normalisation_note(encoder)
    sidecar = {
        "arch": encoder.arch,
        "efficientnet_pytorch": f"efficientnet-{variant}",
        "input_size": encoder.input_size,
        "num_features": encoder.num_features,
        "normalisation": norm,
        "key_prefix": SSUPERGAN_PREFIX,
        "excluded_keys": [k for k in target if k.startswith(CLASSIFIER_PREFIX)],
        "files": {"bare": [f"{bare}.safetensors", f"{bare}.pth"],
                  "ssupergan": ["ssupergan_embedder.safetensors", "ssupergan_embedder.pth"]},
        "encoder": {k: v for k, v in encoder.meta.items() if isinstance(v, (str, int, float))},
    }
    write_json_atomic(out_dir / "ssupergan.json", sidecar)
    write_text_atomic(out_dir / "README.md", _readme(variant, encoder, norm))
    _make_readable(out_dir)
    return out_dir


def _make_readable(out_dir: Path) -> None:
    """The atomic writes leave 0600 temporary-file modes; give the files the usual umask mode
    so the export can be shared."""
    umask = os.umask(0)
    os.umask(umask)
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)

