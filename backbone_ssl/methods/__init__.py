"""Pretraining methods: a registry mapping names to LightningModule classes (solo-learn style)."""

from __future__ import annotations

import difflib

from backbone_ssl.errors import UserError
from backbone_ssl.methods.barlowtwins import BarlowTwins
from backbone_ssl.methods.base import PretrainMethod, SSLMethod
from backbone_ssl.methods.byol import BYOL
from backbone_ssl.methods.dino import DINO
from backbone_ssl.methods.identity import Identity
from backbone_ssl.methods.inpaint import Inpaint
from backbone_ssl.methods.mocov2 import MoCoV2
from backbone_ssl.methods.nnclr import NNCLR
from backbone_ssl.methods.person import Person
from backbone_ssl.methods.simclr import SimCLR
from backbone_ssl.methods.vicreg import VICReg

METHODS: dict[str, type[PretrainMethod]] = {
    "dino": DINO, "byol": BYOL, "inpaint": Inpaint, "person": Person, "identity": Identity,
    "simclr": SimCLR, "mocov2": MoCoV2, "vicreg": VICReg, "barlowtwins": BarlowTwins,
    "nnclr": NNCLR,
}


def get_method(name: str) -> type[PretrainMethod]:
    """The method class registered under ``name`` (UserError naming the valid ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        near = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise UserError(
            f"unknown method '{name}' (choose from {', '.join(METHODS)}){hint}") from None


__all__ = ["METHODS", "PretrainMethod", "SSLMethod", "get_method"]
