"""Atomic checkpoint files for Lightning: write a temporary file, fsync, then rename."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from backbone_ssl.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose files appear whole or not at all.

    A kill at any moment leaves either the previous ``last.ckpt`` or the new one, never a torn file.
    Loading always uses ``weights_only=True``: checkpoints hold tensors and plain containers only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

    def load_checkpoint(self, path: Any, map_location: Any = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        return torch.load(Path(path), map_location=map_location or "cpu", weights_only=True)
