"""Frozen-encoder feature extraction over image folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from backbone_ssl.data.datasets import ImageFolderDataset, scan_decodable
from backbone_ssl.data.transforms import eval_transform
from backbone_ssl.export import Encoder

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _module_device(module: torch.nn.Module) -> torch.device:
    """Device of the first parameter or buffer (CPU for a stateless module)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def extract_features(
    encoder: Encoder,
    dataset: Dataset,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Embed every item of ``dataset`` (items ``(image [3,H,W], label)``) in order.

    Returns float32 ``[N, D]``. The encoder's module is moved to ``device`` for the pass and moved
    back afterwards. ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal).
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else default_device()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        drop_last=False,
    )
    module = encoder.module
    home = _module_device(module)
    chunks: list[np.ndarray] = []
    try:
        module.to(device).eval()
        log.info("embedding %d images with %s (%s)", len(dataset), encoder.name, encoder.arch)
        bar = tqdm(loader, desc=f"embedding {len(dataset)} images", unit="batch",
                   disable=None if progress is None else not progress, leave=False)
        with torch.inference_mode():
            for images, _ in bar:
                out = module(images.to(device, non_blocking=True))
                chunks.append(out.float().reshape(out.shape[0], -1).cpu().numpy())
    finally:
        module.to(home)
    if not chunks:
        return np.zeros((0, encoder.num_features), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def load_image_folder(root: str | os.PathLike) -> tuple[ImageFolderDataset, int]:
    """Scan ``root`` (``ROOT/<identity>/<image>``) and drop undecodable files.

    Returns ``(dataset, skipped)``; the dataset has no transform yet. Classes left with no
    decodable image are removed and labels renumbered, so ``classes`` lists only identities
    that have rows.
    """
    dataset = ImageFolderDataset(root)
    skipped = scan_decodable(dataset)
    present = sorted(set(dataset.labels))
    if len(present) != len(dataset.classes):
        remap = {old: new for new, old in enumerate(present)}
        dataset.classes = [dataset.classes[i] for i in present]
        dataset.labels = [remap[y] for y in dataset.labels]
    return dataset, skipped


def embed_dataset(
    encoder: Encoder,
    dataset: ImageFolderDataset,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Embed a scanned ``dataset`` with the encoder's own preprocessing; float32 ``[N, D]``.

    ``dataset.transform`` is set to :func:`eval_transform` for the encoder.
    """
    dataset.transform = eval_transform(encoder.input_size, encoder.mean, encoder.std)
    return extract_features(encoder, dataset, batch_size, num_workers, device)


def embed_folder(
    encoder: Encoder,
    root: str | os.PathLike,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Path], list[str], int]:
    """Embed every decodable image under ``root``.

    Returns ``(feats [N,D] float32, labels [N] int64, paths [N], classes, skipped)``.
    """
    dataset, skipped = load_image_folder(root)
    feats = embed_dataset(encoder, dataset, batch_size, num_workers, device)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    return feats, labels, list(dataset.paths), list(dataset.classes), skipped
