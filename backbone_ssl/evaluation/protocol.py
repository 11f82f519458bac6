"""The evaluation protocol on a train/test pair of identity folders: scan and align the
splits, embed both with a frozen encoder, then cosine kNN (exact, or approximate faiss IVF
with its measured recall) and the linear probe. :mod:`.report` writes the results.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.features import embed_dataset, load_image_folder
from backbone_ssl.evaluation.knn import (
    KNN_INDEXES,
    default_nprobe,
    ivf_lists,
    knn_neighbours,
    knn_scores,
)
from backbone_ssl.evaluation.labels import align_by_name, no_test_left_message, require_identities
from backbone_ssl.evaluation.linear import linear_probe
from backbone_ssl.evaluation.plots import plot_embedding_2d, plot_retrieval_grid
from backbone_ssl.export import Encoder

log = logging.getLogger(__name__)

#: Neighbours shown per query in the retrieval grid.
GRID_NEIGHBOURS = 5


@dataclass
class EvalSplits:
    """Scanned train and test folders whose labels share the train class indices.

    ``test`` keeps only decodable images whose identity folder also exists in ``train``;
    ``skipped`` counts ``train``/``test`` undecodable files and ``dropped_unknown`` test images.
    """

    train: ImageFolderDataset
    test: ImageFolderDataset
    skipped: dict[str, int]

    @property
    def train_labels(self) -> np.ndarray:
        """``[N]`` int64."""
        return np.asarray(self.train.labels, dtype=np.int64)

    @property
    def test_labels(self) -> np.ndarray:
        """``[M]`` int64, indices into ``train.classes``."""
        return np.asarray(self.test.labels, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)


def load_splits(train_dir: str | os.PathLike, test_dir: str | os.PathLike) -> EvalSplits:
    """Scan both folders, check there are >= 2 train identities, align test labels by name."""
    train, train_skipped = load_image_folder(train_dir)
    require_identities(train.labels, train.classes, f"--train {train_dir}")
    test, test_skipped = load_image_folder(test_dir)
    labels, keep, unknown = align_by_name(train.classes, test.classes, test.labels)
    if len(keep) == 0:
        raise UserError(no_test_left_message(f"--test {test_dir}", f"--train {train_dir}", unknown))
    dropped = len(test.paths) - len(keep)
    if dropped:
        log.warning(
            "dropping %d test images of %d identities absent from %s: %s",
            dropped,
            len(unknown),
            train_dir,
            ", ".join(unknown[:5]),
        )
    test.paths = [test.paths[i] for i in keep]
    test.labels = labels.tolist()
    test.classes = list(train.classes)
    skipped = {"train": train_skipped, "test": test_skipped, "dropped_unknown": dropped}
    return EvalSplits(train, test, skipped)


def evaluate_splits(
    encoder: Encoder,
    splits: EvalSplits,
    k: int = 20,
    t: float = 0.07,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    plots_dir: str | os.PathLike | None = None,
    tag: str = "",
    device: str | torch.device | None = None,
    knn_index: str = "flat",
    nprobe: int | None = None,
) -> dict[str, Any]:
    """kNN + linear probe of ``encoder`` on prepared splits; see :func:`evaluate_encoder`."""
    log.info(
        "embedding %d train / %d test images with %s",
        len(splits.train),
        len(splits.test),
        encoder.arch,
    )
    train_feats = embed_dataset(encoder, splits.train, batch_size, num_workers, device)
    test_feats = embed_dataset(encoder, splits.test, batch_size, num_workers, device)
    train_labels, test_labels = splits.train_labels, splits.test_labels
    search = knn_settings(len(train_feats), knn_index, nprobe)
    sims, idx = knn_neighbours(train_feats, test_feats, max(k, GRID_NEIGHBOURS), **search)
    knn = knn_scores(sims, idx, train_labels, test_labels, k, t, splits.num_classes)
    if knn_index != "flat":  # approximate: the report says so (exact reports keep the schema)
        knn.update(search)
        knn.update(approximate_recall(train_feats, test_feats, idx, k, seed))
    linear = linear_probe(
        train_feats,
        train_labels,
        test_feats,
        test_labels,
        seed=seed,
        class_names=splits.train.classes,
        source=f"--train {splits.train.root}",
    )
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        plot_retrieval_grid(
            splits.test.paths,
            splits.train.paths,
            idx,
            test_labels,
            train_labels,
            plots_dir / f"retrieval{tag}.png",
            seed=seed,
            n_neighbours=GRID_NEIGHBOURS,
        )
        plot_embedding_2d(
            test_feats,
            test_labels,
            plots_dir / f"embedding{tag}.png",
            class_names=splits.train.classes,
            seed=seed,
        )
    return {
        "knn": knn,
        "linear": linear,
        "n_train": len(splits.train),
        "n_test": len(splits.test),
        "num_classes": splits.num_classes,
        "skipped": dict(splits.skipped),
    }


def evaluate_encoder(
    encoder: Encoder,
    train_dir: str | os.PathLike,
    test_dir: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """Embed both folders, run kNN (cosine, weighted vote) and the linear probe.

    ``options`` are those of :func:`evaluate_splits` (``k``, ``t``, ``seed``, ``batch_size``,
    ``num_workers``, ``plots_dir``, ``tag``, ``device``, ``knn_index``, ``nprobe``).
    Returns ``{"knn": {k,t,top1,top5,nn1}, "linear": {top1}, "n_train", "n_test", "num_classes",
    "skipped": {"train", "test", "dropped_unknown"}}``; with ``plots_dir`` also writes
    ``retrieval{tag}.png`` and ``embedding{tag}.png`` there. ``knn_index="ivf"`` searches
    approximately (faiss IVF, ``nprobe`` cells per query) and adds ``index``, ``nlist``,
    ``nprobe`` and the measured ``recall_at_k`` (on ``recall_queries`` test rows checked against
    the exact search) to the ``knn`` block.
    """
    return evaluate_splits(encoder, load_splits(train_dir, test_dir), **options)


#: Queries checked against the exact search when the kNN search is approximate.
RECALL_QUERIES = 200


def approximate_recall(train_feats: np.ndarray, test_feats: np.ndarray, idx: np.ndarray, k: int,
                       seed: int = 0) -> dict[str, Any]:
    """Recall@k of approximate neighbours ``idx`` ``[Q, >=k]``, measured against the exact search
    on up to ``RECALL_QUERIES`` test rows drawn with ``seed``:
    ``{"recall_at_k": float, "recall_queries": int}``."""
    k = min(k, idx.shape[1], len(train_feats))
    n = min(RECALL_QUERIES, len(test_feats))
    rows = np.sort(np.random.default_rng(seed).choice(len(test_feats), n, replace=False))
    _, exact = knn_neighbours(train_feats, test_feats[rows], k)
    hits = [len(set(a[:k]) & set(b[:k])) / k for a, b in zip(idx[rows], exact)]
    return {"recall_at_k": round(float(np.mean(hits)), 4), "recall_queries": int(n)}


def knn_settings(n_gallery: int, knn_index: str, nprobe: int | None) -> dict[str, Any]:
    """``knn_search`` keyword arguments with IVF defaults resolved for ``n_gallery`` vectors:
    ``{"index"}`` for exact search, ``{"index", "nlist", "nprobe"}`` for ``"ivf"``."""
    if knn_index not in KNN_INDEXES:
        raise UserError(f"unknown kNN index '{knn_index}' (choose from {', '.join(KNN_INDEXES)})")
    if knn_index == "flat":
        return {"index": "flat"}
    nlist = ivf_lists(n_gallery)
    return {"index": knn_index, "nlist": nlist,
            "nprobe": min(nlist, nprobe) if nprobe else default_nprobe(nlist)}
