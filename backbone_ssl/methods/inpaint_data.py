"""Inpainting training data: images with holes (``inpaint.source`` in
:mod:`backbone_ssl.methods.inpaint`).

- :class:`FaceHoles`: any image folder, a random box or free-form hole per image;
- :class:`PanelHoles`: the last panel of each face-cloze sequence of a ``golden prepare``
  output, its face area as the hole;
- :func:`build_datasets`: the ``(train, held_out)`` pair for a config (files or whole books
  held out).

Images are ``[3,S,S]`` in [-1, 1] (:func:`~backbone_ssl.data.signed.to_signed`), holes
``[1,S,S]`` (1 = hole).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch.utils.data import Dataset

from backbone_ssl.data.datasets import ImageFolderDataset, first_decodable, resolve_image_root
from backbone_ssl.data.golden_datasets import PanelSequences
from backbone_ssl.data.golden_faces import face_box_in_panel
from backbone_ssl.data.signed import to_signed
from backbone_ssl.errors import UserError
from backbone_ssl.io import open_rgb
from backbone_ssl.methods.masks import MaskGenerator, fit_box
from backbone_ssl.methods.support import split_indices

if TYPE_CHECKING:
    from backbone_ssl.methods.inpaint import InpaintConfig

log = logging.getLogger(__name__)


def maybe_flip(image: torch.Tensor, mask: torch.Tensor, prob: float) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """Flip ``image`` ``[3,H,W]`` and ``mask`` ``[1,H,W]`` left-right together with ``prob``."""
    if prob > 0 and float(torch.rand(1)) < prob:
        return image.flip(-1), mask.flip(-1)
    return image, mask


class FaceHoles(Dataset):
    """Face crops with random holes.

    Item: ``{"image": [3,S,S] in [-1,1], "mask": [1,S,S] (1 = hole), "skipped": int,
    "rescaled": 0}``. Training items draw a fresh mask from torch's global generator (seeded per
    sample by the loader); held-out items (``train=False``) get a fixed mask per index.
    """

    def __init__(self, images: ImageFolderDataset, indices: Sequence[int], size: int,
                 masks: MaskGenerator, train: bool, seed: int = 0, hflip_prob: float = 0.5) -> None:
        self.images, self.indices, self.size = images, list(indices), size
        self.masks, self.train, self.seed, self.hflip_prob = masks, train, seed, hflip_prob

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        _, img, skipped = self.images.decode_near(self.indices[i])
        image = to_signed(img, self.size)
        g = None if self.train else torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        mask = self.masks(self.size, self.size, g)[None]
        if self.train:
            image, mask = maybe_flip(image, mask, self.hflip_prob)
        return {"image": image, "mask": mask, "skipped": skipped, "rescaled": 0}


class PanelHoles(Dataset):
    """The last panel of each face-cloze sequence with its face area as the hole.

    Wraps a :class:`~backbone_ssl.data.golden_datasets.PanelSequences` (its book split,
    missing-file handling and panel crops) but reads only the last panel, unmasked, as the target;
    the hole is :func:`~backbone_ssl.data.golden_faces.face_box_in_panel`, as in the sequences.
    Item: as :class:`FaceHoles`; ``rescaled`` is 1 when the face area's coverage was out of range
    and rescaled (:func:`masks.fit_box`).
    """

    def __init__(self, sequences: PanelSequences, min_coverage: float, max_coverage: float,
                 train: bool, hflip_prob: float = 0.5) -> None:
        self.seqs, self.train, self.hflip_prob = sequences, train, hflip_prob
        self.min_coverage, self.max_coverage = min_coverage, max_coverage

    def __len__(self) -> int:
        return len(self.seqs)

    def _load(self, i: int) -> dict[str, Any]:
        frames, areas = self.seqs.entries[i]
        pa, fa = areas[-1]
        s = self.seqs.panel_size
        image = to_signed(open_rgb(self.seqs.panels_root / frames[-1]).crop(pa), s)
        box = face_box_in_panel(pa, fa, s)
        mask, rescaled = fit_box(box, s, s, self.min_coverage, self.max_coverage)
        mask = mask[None]
        if self.train:
            image, mask = maybe_flip(image, mask, self.hflip_prob)
        return {"image": image, "mask": mask, "skipped": 0, "rescaled": int(rescaled)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        found = first_decodable(self._load, index, len(self), self._skip)
        if found is None:
            raise RuntimeError(f"no decodable panel near sequence {index}")
        _, item, failed = found
        item["skipped"] = failed
        return item

    def _skip(self, i: int, exc: Exception) -> None:
        log.warning("skipping panel of sequence %d: %s", i, exc)


def resolve_source(cfg: InpaintConfig) -> str:
    """``faces`` or ``panels`` (``auto``: panels when ``data.path`` holds ``sequences.json``)."""
    source = cfg.inpaint.source
    if source == "auto":
        return "panels" if (Path(str(cfg.data.path)) / "sequences.json").is_file() else "faces"
    return source


def build_datasets(cfg: InpaintConfig) -> tuple[Dataset, Dataset]:
    """``(train, held_out)`` datasets for ``cfg`` (see :mod:`backbone_ssl.methods.inpaint`)."""
    p, size = cfg.inpaint, cfg.data.image_size
    if resolve_source(cfg) == "panels":
        everything = PanelSequences(cfg.data.path, "all", panel_size=size, return_mask=False)
        if len(set(everything.books())) < 2:
            raise UserError(f"inpaint on panels holds out whole books, but {cfg.data.path} has "
                            "one book; add books or use inpaint.source=faces")
        split = [PanelSequences(cfg.data.path, name, test_fraction=p.val_fraction,
                                panel_size=size, return_mask=False, seed=cfg.seed)
                 for name in ("train", "test")]
        return tuple(PanelHoles(s, p.min_coverage, p.max_coverage, train=name == "train",
                                hflip_prob=p.hflip_prob)
                     for s, name in zip(split, ("train", "test")))  # type: ignore[return-value]
    images = ImageFolderDataset(resolve_image_root(cfg.data.path))
    n = len(images) if cfg.data.max_images is None else min(len(images), cfg.data.max_images)
    train_idx, val_idx = split_indices(n, p.val_fraction, cfg.seed, f"--data {cfg.data.path}")
    masks = cfg.mask_generator()
    return (FaceHoles(images, train_idx, size, masks, True, cfg.seed, p.hflip_prob),
            FaceHoles(images, val_idx, size, masks, False, cfg.seed, 0.0))
