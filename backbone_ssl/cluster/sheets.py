"""Pictures a person checks faster than numbers: a contact sheet per large cluster, a sheet of
the most confused cluster pairs and a cluster-size histogram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backbone_ssl.cluster.graph import KnnGraph
from backbone_ssl.io import open_rgb

THUMB = 48
PAD = 2


def _thumb(path: Path, size: int = THUMB) -> Image.Image:
    """A ``size`` px thumbnail of ``path`` (grey square when it cannot be decoded)."""
    try:
        return open_rgb(path).resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError):
        return Image.new("RGB", (size, size), (128, 128, 128))


def _grid(paths: list[Path], cols: int, title: str) -> Image.Image:
    rows = max(1, math.ceil(len(paths) / cols))
    head = 14
    sheet = Image.new("RGB", (cols * (THUMB + PAD) + PAD, head + rows * (THUMB + PAD) + PAD),
                      (255, 255, 255))
    ImageDraw.Draw(sheet).text((PAD, 1), title, fill=(0, 0, 0))
    for i, p in enumerate(paths):
        r, c = divmod(i, cols)
        sheet.paste(_thumb(p), (PAD + c * (THUMB + PAD), head + PAD + r * (THUMB + PAD)))
    return sheet


def cluster_sheets(out: Path, paths: list[Path], labels: np.ndarray, conf: np.ndarray,
                   min_size: int, max_sheets: int, per_sheet: int) -> list[str]:
    """``out/cluster_<c>.png`` for the ``max_sheets`` largest clusters of ``>= min_size``
    faces: the ``per_sheet`` most confident faces first. Returns the file names."""
    out.mkdir(parents=True, exist_ok=True)
    ids, counts = np.unique(labels, return_counts=True)
    order = np.lexsort((ids, -counts))
    written = []
    for c in ids[order][:max_sheets]:
        members = np.flatnonzero(labels == c)
        if len(members) < min_size:
            break
        members = members[np.argsort(-conf[members], kind="stable")][:per_sheet]
        cols = min(len(members), int(math.ceil(math.sqrt(per_sheet))))
        name = f"cluster_{int(c):06d}.png"
        _grid([paths[i] for i in members], cols,
              f"cluster {int(c)}: {int((labels == c).sum())} faces").save(out / name)
        written.append(name)
    return written


def confused_pairs(graph: KnnGraph, labels: np.ndarray, top: int) -> list[tuple[int, int, float]]:
    """The ``top`` cluster pairs joined by the most kNN similarity: ``(a, b, summed cosine)``
    over the graph edges whose ends lie in different clusters, largest first."""
    a, b, s = graph.edges(0.0)
    la, lb = labels[a], labels[b]
    cross = la != lb
    if not cross.any():
        return []
    lo, hi = np.minimum(la, lb)[cross], np.maximum(la, lb)[cross]
    keys, inv = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    weight = np.bincount(inv.reshape(-1), weights=s[cross])
    order = np.argsort(-weight, kind="stable")[:top]
    return [(int(keys[i, 0]), int(keys[i, 1]), float(weight[i])) for i in order]


def confused_sheet(path: Path, paths: list[Path], labels: np.ndarray, conf: np.ndarray,
                   pairs: list[tuple[int, int, float]], per_side: int = 6) -> bool:
    """One row per confused pair: ``per_side`` faces of cluster a | ``per_side`` of cluster b.
    Returns False (nothing written) when there is no pair."""
    if not pairs:
        return False
    cell = THUMB + PAD
    head, gap = 14, 12
    width = PAD + 2 * per_side * cell + gap
    sheet = Image.new("RGB", (width, len(pairs) * (head + cell) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (a, b, w) in enumerate(pairs):
        y = r * (head + cell)
        draw.text((PAD, y + 1), f"clusters {a} | {b}   (kNN similarity {w:.2f})", fill=(0, 0, 0))
        for side, c in enumerate((a, b)):
            members = np.flatnonzero(labels == c)
            members = members[np.argsort(-conf[members], kind="stable")][:per_side]
            x0 = PAD + side * (per_side * cell + gap)
            for j, i in enumerate(members):
                sheet.paste(_thumb(paths[i]), (x0 + j * cell, y + head))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return True


def size_histogram(path: Path, labels: np.ndarray, title: str) -> None:
    """Histogram of cluster sizes (log-spaced bins, log counts) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.bincount(labels)
    sizes = sizes[sizes > 0]
    bins = np.unique(np.geomspace(1, max(2, sizes.max() + 1), 30).astype(int))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(sizes, bins=bins, color="#4472c4")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cluster size (faces)")
    ax.set_ylabel("clusters")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
