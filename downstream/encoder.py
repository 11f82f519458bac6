"""The exported encoder as a downstream module: [-1, 1] images in, features out.

Downstream models work on images in [-1, 1]; exported encoders expect ``(x01 - mean) / std`` at
their own input size. :class:`EncoderInput` does that conversion (and, when asked, the resize), and
keeps a frozen encoder frozen (eval mode, no gradients to its weights) whatever ``.train()`` is
called on the model around it; gradients still flow *through* it to its input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from backbone_ssl.data.signed import to_unit
from backbone_ssl.errors import UserError
from backbone_ssl.export import Encoder, resolve_encoder


class EncoderInput(nn.Module):
    """``[B,3,H,W]`` in [-1, 1] -> ``[B, num_features]`` through an exported encoder.

    ``resize``: bilinear (antialiased) resize of the input to the encoder's ``input_size`` when
    the side differs; without it a different side is an error. ``finetune``: train the encoder's
    weights too (they are frozen otherwise, BatchNorm statistics included).
    """

    def __init__(self, encoder: Encoder, *, finetune: bool = False, resize: bool = False) -> None:
        super().__init__()
        self.encoder = encoder.module
        self.input_size = int(encoder.input_size)
        self.num_features = int(encoder.num_features)
        self.finetune = finetune
        self.resize = resize
        mean = torch.tensor(encoder.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(encoder.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        for p in self.encoder.parameters():
            p.requires_grad_(finetune)
        self.train(False)

    def train(self, mode: bool = True) -> EncoderInput:
        super().train(mode)
        self.encoder.train(mode and self.finetune)
        return self

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images at the task's side -> the encoder's normalised input."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            if not self.resize:
                raise ValueError(f"encoder takes {self.input_size}px input, got {tuple(x.shape)}")
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return (to_unit(x, clamp=False) - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.normalise(x)).flatten(1)


class EncoderStages(nn.Module):
    """``[B,3,H,W]`` in [-1, 1] -> the feature maps of the encoder's last ``n_stages`` stages
    (timm's ``forward_intermediates``), for multi-scale critics. Frozen like its
    :class:`EncoderInput`; gradients flow through to the input."""

    def __init__(self, encoder_input: EncoderInput, n_stages: int = 3) -> None:
        super().__init__()
        if not hasattr(encoder_input.encoder, "forward_intermediates"):
            raise UserError(f"{type(encoder_input.encoder).__name__} has no forward_intermediates:"
                            " use model.projected=false for a pooled-feature discriminator")
        self.input = encoder_input
        self.n_stages = n_stages
        with torch.no_grad():
            probe = torch.zeros(1, 3, encoder_input.input_size, encoder_input.input_size)
            maps = self._maps(probe, normalise=False)
        self.channels = [int(f.shape[1]) for f in maps]
        self.sizes = [int(f.shape[-1]) for f in maps]  # square input: square maps

    def _maps(self, x: torch.Tensor, normalise: bool = True) -> list[torch.Tensor]:
        x = self.input.normalise(x) if normalise else x
        return self.input.encoder.forward_intermediates(x, indices=self.n_stages,
                                                        intermediates_only=True)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._maps(x)


def load_task_encoder(spec: str, *, task_size: int, what: str, size_key: str, resize: bool,
                      seed: int = 0) -> Encoder:
    """Resolve ``spec`` (``random:<arch>`` gets ``task_size``) and check its input size.

    An encoder trained at another side than the task feeds it is a UserError naming both sides
    and the two ways out (``size_key`` or ``data.resize_to_encoder=true``).
    """
    encoder = resolve_encoder(spec, input_size=task_size, seed=seed)
    if encoder.input_size != task_size and not resize:
        raise UserError(
            f"encoder {spec} takes {encoder.input_size}x{encoder.input_size} input but this task "
            f"feeds it {what} of {task_size}x{task_size}: set {size_key}={encoder.input_size} "
            "or data.resize_to_encoder=true"
        )
    return encoder


def encoder_info(spec: str, encoder: Encoder, *, frozen: bool) -> dict:
    """The report's ``encoder`` block."""
    meta = {k: v for k, v in encoder.meta.items() if isinstance(v, (str, int, float, bool))
            and k in ("method", "data", "steps", "toolkit_version", "sha256")}
    return {"spec": spec, "arch": encoder.arch, "input_size": encoder.input_size,
            "num_features": encoder.num_features, "frozen": frozen,
            "mean": [float(v) for v in encoder.mean], "std": [float(v) for v in encoder.std],
            **meta}


def reference_features(spec: str, seed: int, image_size: int) -> EncoderInput:
    """The fixed reference encoder of FD-enc: frozen, fed [-1, 1] images of ``image_size``
    (resized to its own input size when it was trained at another)."""
    return EncoderInput(resolve_encoder(spec, input_size=image_size, seed=seed), resize=True)
