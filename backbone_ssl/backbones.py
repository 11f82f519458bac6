"""timm backbones by name: uniform API (``forward`` -> pooled ``[B, num_features]``)."""

from __future__ import annotations

import difflib

import timm
import torch.nn as nn

from backbone_ssl.errors import UserError

#: Small backbones that train in minutes on 2 CPU cores at 64 px (the configs' defaults).
CPU_FRIENDLY = ("resnet18", "resnet10t", "tf_efficientnet_b0", "mobilenetv3_small_100")


def check_arch(arch: str) -> None:
    """Raise a UserError naming close matches when timm does not know ``arch``."""
    if timm.is_model(arch):
        return
    near = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else " (see timm.list_models())"
    raise UserError(f"unknown model.arch '{arch}'{hint}")


def create_backbone(arch: str, **kwargs) -> nn.Module:
    """A timm model with its classifier removed: ``[B,3,H,W] -> [B, num_features]``.

    Always ``pretrained=False``: weights are never downloaded. ``kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    check_arch(arch)
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def num_features(backbone: nn.Module) -> int:
    """Width of the pooled feature vector (timm's ``num_features``)."""
    return int(backbone.num_features)
