"""Evaluation figures: retrieval grids and 2-D embeddings (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from backbone_ssl.io import atomic_path, open_rgb

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HIT_COLOUR = "#2ca02c"
MISS_COLOUR = "#d62728"
THUMB_SIZE = 96


def _agg_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas.

    Built without pyplot, so no global backend is switched and nothing is left open: safe in
    notebooks, threads and headless machines alike.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, out_png: str | os.PathLike) -> Path:
    """Write ``fig`` to ``out_png`` atomically."""
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return out_png


def _thumbnail(path: str | os.PathLike) -> np.ndarray:
    """``[THUMB_SIZE, THUMB_SIZE, 3]`` uint8 image (grey when the file cannot be decoded)."""
    try:
        img = open_rgb(path).resize((THUMB_SIZE, THUMB_SIZE))
    except (OSError, ValueError, SyntaxError):
        return np.full((THUMB_SIZE, THUMB_SIZE, 3), 128, dtype=np.uint8)
    return np.asarray(img)


def _frame(ax, colour: str | None) -> None:
    """Hide ticks; draw a thick border in ``colour`` (none when ``colour`` is None)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)


def plot_retrieval_grid(
    test_paths: Sequence[str | os.PathLike],
    train_paths: Sequence[str | os.PathLike],
    neighbour_idx: np.ndarray,
    test_labels: np.ndarray,
    train_labels: np.ndarray,
    out_png: str | os.PathLike,
    n_queries: int = 8,
    seed: int = 0,
    n_neighbours: int = 5,
) -> Path:
    """One row per sampled query: the query image, then its nearest training images.

    ``neighbour_idx`` ``[Q, >=1]`` indexes ``train_paths``; labels are ``[Q]`` and ``[G]`` over the
    same classes. Neighbours of the query's identity get a green border, others a red one.
    """
    test_labels, train_labels = np.asarray(test_labels), np.asarray(train_labels)
    n_queries = max(1, min(n_queries, len(test_paths)))
    rows = np.sort(np.random.default_rng(seed).choice(len(test_paths), n_queries, replace=False))
    cols = min(n_neighbours, neighbour_idx.shape[1])
    fig = _agg_figure(1.3 * (cols + 1), 1.3 * n_queries)
    axes = fig.subplots(n_queries, cols + 1, squeeze=False)
    for r, q in enumerate(rows):
        axes[r, 0].imshow(_thumbnail(test_paths[q]))
        _frame(axes[r, 0], None)
        for c in range(cols):
            j = neighbour_idx[q, c]
            if j < 0:  # an approximate search found fewer neighbours: leave the cell empty
                axes[r, c + 1].axis("off")
                continue
            hit = train_labels[j] == test_labels[q]
            axes[r, c + 1].imshow(_thumbnail(train_paths[j]))
            _frame(axes[r, c + 1], HIT_COLOUR if hit else MISS_COLOUR)
    axes[0, 0].set_title("query", fontsize=8)
    for c in range(cols):
        axes[0, c + 1].set_title(f"#{c + 1}", fontsize=8)
    return _save_png(fig, out_png)


def _largest_classes(labels: np.ndarray, max_classes: int) -> np.ndarray:
    """Up to ``max_classes`` class ids with the most rows (ties: smaller id), sorted."""
    ids, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, -counts))[:max_classes]
    return np.sort(ids[order])


def project_2d(feats: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Project ``feats`` ``[N, D]`` to ``[N, 2]`` with PCA or t-SNE (fixed random_state)."""
    feats = np.asarray(feats, dtype=np.float64)
    if len(feats) < 3:
        return np.pad(feats[:, :2], ((0, 0), (0, max(0, 2 - feats.shape[1]))))
    if method == "pca":
        from sklearn.decomposition import PCA

        out = PCA(n_components=min(2, feats.shape[1]), random_state=seed).fit_transform(feats)
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(1, (len(feats) - 1) // 3)))
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(feats)
    raise ValueError(f"unknown projection method {method!r} (use 'pca' or 'tsne')")


def plot_embedding_2d(
    feats: np.ndarray,
    labels: np.ndarray,
    out_png: str | os.PathLike,
    method: str = "pca",
    max_classes: int = 20,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
) -> Path:
    """Scatter of ``feats`` ``[N, D]`` projected to 2-D, coloured by ``labels`` ``[N]``.

    Only the ``max_classes`` most populous identities are drawn (the projection is fitted on them).
    """
    from matplotlib import colormaps

    labels = np.asarray(labels)
    shown = _largest_classes(labels, max_classes)
    mask = np.isin(labels, shown)
    points = project_2d(np.asarray(feats)[mask], method, seed)
    cmap = colormaps["tab20" if len(shown) > 10 else "tab10"]
    fig = _agg_figure(6, 5)
    ax = fig.subplots()
    for i, c in enumerate(shown):
        sel = labels[mask] == c
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(points[sel, 0], points[sel, 1], s=12, color=cmap(i % cmap.N), label=name)
    ax.set_title(
        f"{method.upper()} of features ({len(shown)} identities, {int(mask.sum())} images)"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    if len(shown) <= 20:
        ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save_png(fig, out_png)
