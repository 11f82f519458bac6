"""Comics-specific positive pairs: faces from a window of consecutive panels of one book.

In a comic book the same characters recur in consecutive panels, a positive pair no augmentation
gives. ``golden prepare`` names its crops ``faces/<book>/<page>_<panel>_<k>.jpg``; faces of one
book whose panels lie at most ``window`` panels apart (in reading order: page, then panel) are
*candidates* (faces of the same panel are not: two faces in one panel are two characters).
Candidates are filtered by **mutual nearest neighbour** in the current embedding (as NNCLR /
MSF use the embedding to pick positives; here only within the window): face ``i`` keeps partner
``j`` when ``j`` is ``i``'s most similar candidate and ``i`` is ``j``'s, which drops most pairs of
different characters. :class:`SequencePairViews` then takes, with probability ``p``, view 1 of
image ``i``'s views from its partner ``j`` (view 0 and any further views stay ``i``'s).

The partner table is a shared-memory tensor, rewritten in place by :func:`refresh_partners` (once
per epoch from the method), so persistent DataLoader workers see every update.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.errors import UserError

_FACE_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)$")


def panel_positions(paths: Sequence[Path]) -> list[tuple[str, int] | None]:
    """``(book, reading-order panel index)`` of each ``faces/<book>/<page>_<panel>_<k>.jpg``;
    ``None`` for a file not named that way (it gets no candidates)."""
    parsed: list[tuple[str, int, int] | None] = []
    for p in paths:
        m = _FACE_NAME.match(Path(p).stem)
        parsed.append((Path(p).parent.name, int(m[1]), int(m[2])) if m else None)
    order: dict[str, list[tuple[int, int]]] = {}
    for t in parsed:
        if t is not None:
            order.setdefault(t[0], []).append((t[1], t[2]))
    rank = {book: {pp: r for r, pp in enumerate(sorted(set(v)))} for book, v in order.items()}
    return [None if t is None else (t[0], rank[t[0]][(t[1], t[2])]) for t in parsed]


def window_candidates(paths: Sequence[Path], window: int) -> list[list[int]]:
    """For each face, the indices of the faces of the same book at 1..``window`` panels away."""
    pos = panel_positions(paths)
    by_panel: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(pos):
        if p is not None:
            by_panel.setdefault(p, []).append(i)
    out: list[list[int]] = []
    for p in pos:
        if p is None:
            out.append([])
            continue
        book, r = p
        out.append([j for d in range(-window, window + 1) if d != 0
                    for j in by_panel.get((book, r + d), [])])
    return out


def mutual_nn_partners(embeddings: torch.Tensor, candidates: list[list[int]],
                       mutual: bool = True) -> torch.Tensor:
    """Partner of each face: its most cosine-similar candidate, kept only when the relation is
    mutual (``mutual``); ``-1`` where none. ``embeddings``: ``[N, D]``; returns ``[N]`` long."""
    z = F.normalize(embeddings.float(), dim=1)
    best = torch.full((len(candidates),), -1, dtype=torch.long)
    for i, cand in enumerate(candidates):
        if cand:
            sims = z[cand] @ z[i]
            best[i] = cand[int(sims.argmax())]
    if not mutual:
        return best
    out = torch.full_like(best, -1)
    has = best >= 0
    idx = torch.nonzero(has).flatten()
    back = best[best[idx]]
    out[idx[back == idx]] = best[idx[back == idx]]
    return out


def all_candidates_partners(candidates: list[list[int]]) -> torch.Tensor:
    """Before any embedding exists: ``-2`` marks "draw any candidate" (see SequencePairViews)."""
    return torch.tensor([-2 if c else -1 for c in candidates], dtype=torch.long)


class SequencePairViews(Dataset):
    """:class:`~backbone_ssl.data.datasets.PretrainViews` with sequence positives.

    Item ``(views, label, skipped)``; with probability ``p`` (and a partner), ``views[1]`` is
    rendered from the partner face by the transform's second view. ``transform`` must be a
    lightly ``MultiViewTransform`` (it has ``.transforms``, one per view).
    """

    def __init__(self, images: ImageFolderDataset, transform: Callable, p: float,
                 window: int, max_images: int | None = None) -> None:
        views = getattr(transform, "transforms", None)
        if not views or len(views) < 2:
            raise UserError("data.sequence_positives needs a method with two or more views")
        self.images, self.transform, self.p = images, transform, p
        self.length = len(images) if max_images is None else min(len(images), max_images)
        self.candidates = [[j for j in c if j < self.length]
                           for c in window_candidates(images.paths[:self.length], window)]
        if not any(self.candidates):
            raise UserError(f"data.sequence_positives: no two faces of {images.root} lie within "
                            f"{window} panels of one book (is it a `golden prepare` output's "
                            "faces/ folder?)")
        self.partners = all_candidates_partners(self.candidates).share_memory_()

    def __len__(self) -> int:
        return self.length

    def partner_of(self, i: int) -> int:
        j = int(self.partners[i])
        if j == -2:  # no embedding yet: any candidate of the window
            return random.choice(self.candidates[i])
        return j

    def __getitem__(self, index: int):
        i, img, skipped = self.images.decode_near(index)
        views = self.transform(img)
        j = self.partner_of(i) if i < self.length else -1
        if j >= 0 and random.random() < self.p:
            _, partner, more = self.images.decode_near(j)
            views[1] = self.transform.transforms[1](partner)
            skipped += more
        return views, self.images.labels[i], skipped

    def stats(self) -> dict[str, int]:
        """How many faces have candidates and how many kept a (mutual) partner."""
        return {"faces": self.length, "with_candidates": sum(1 for c in self.candidates if c),
                "with_partner": int((self.partners >= 0).sum())}


@torch.no_grad()
def refresh_partners(dataset: SequencePairViews, backbone: torch.nn.Module, image_size: int,
                     mutual: bool, device: torch.device, batch_size: int = 256) -> dict[str, int]:
    """Embed every face with ``backbone`` (eval mode, centre resize to ``image_size``) and
    rewrite ``dataset.partners`` in place with the (mutual) nearest window candidate."""
    from torchvision.transforms import v2

    from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD

    tf = v2.Compose([v2.Resize((image_size, image_size)), v2.ToImage(),
                     v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(DEFAULT_MEAN, DEFAULT_STD)])
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        for start in range(0, dataset.length, batch_size):
            batch = [tf(dataset.images.decode_near(i)[1])
                     for i in range(start, min(start + batch_size, dataset.length))]
            feats.append(backbone(torch.stack(batch).to(device)).float().cpu())
    finally:
        backbone.train(was_training)
    partners = mutual_nn_partners(torch.cat(feats), dataset.candidates, mutual)
    dataset.partners.copy_(partners)
    return dataset.stats()
