"""backbone-ssl: self-supervised backbone pretraining for comic and cartoon faces."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def load_encoder(path: str, **kwargs):  # noqa: ANN201 - thin lazy re-export
    """Load a frozen encoder (see :func:`backbone_ssl.export.load_encoder`)."""
    from backbone_ssl.export import load_encoder as _load

    return _load(path, **kwargs)
