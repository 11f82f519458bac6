"""Hole masks for inpainting: random boxes and free-form brush strokes.

A mask is a float ``[H,W]`` tensor, 1 in the hole and 0 elsewhere. Every draw takes a
``torch.Generator`` so that the same seed gives the same mask. Coverage (the hole's fraction of the
image) is kept inside ``[min_coverage, max_coverage]``:

- boxes get an area drawn in that range and an aspect ratio in [1/2, 2], clamped to the image;
- free-form masks (Yu et al., 2019, "Free-Form Image Inpainting with Gated Convolution",
  https://arxiv.org/abs/1806.03589) are 1..``max_strokes`` strokes, each a polyline of random
  vertices (kept inside the image) drawn with a round brush, so each stroke is one connected blob;
- a draw whose coverage falls outside the range is redrawn up to ``tries`` times, then replaced by
  the documented fallback: a box of the mid-range coverage at a random place.

Masks are never empty nor full: boxes are at most ``(H-1) x W`` or ``H x (W-1)`` and at least one
pixel. On very small grids a box may not hit the coverage range exactly (one pixel is already
``1/(H*W)``); images of at least 8x8 pixels always do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from backbone_ssl.errors import UserError

MASK_KINDS = ("box", "free_form", "mixed")


def _uniform(g: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    """``[n]`` floats uniform in ``[low, high)``."""
    return low + (high - low) * torch.rand(n, generator=g)


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An int uniform in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (1,), generator=g).item())


def box_mask(h: int, w: int, coverage: float, g: torch.Generator) -> torch.Tensor:
    """``[H,W]`` mask of one axis-aligned box covering about ``coverage`` of the image.

    The aspect ratio is log-uniform in [1/2, 2] (given up when the box would not fit); the box is
    at least one pixel and never the whole image; its place is uniform.
    """
    area = coverage * h * w
    ratio = math.exp(float(_uniform(g, math.log(0.5), math.log(2.0))))  # width / height
    bh = min(max(int(round(math.sqrt(area / ratio))), 1), h)
    bw = max(int(round(area / bh)), 1)
    if bw > w:  # too wide for the image: keep the area, give up the aspect ratio
        bw, bh = w, min(max(int(round(area / w)), 1), h)
    if bh == h and bw == w:  # never the whole image
        if h > 1:
            bh -= 1
        else:
            bw -= 1
    y0 = _randint(g, 0, h - bh)
    x0 = _randint(g, 0, w - bw)
    mask = torch.zeros(h, w)
    mask[y0:y0 + bh, x0:x0 + bw] = 1.0
    return mask


def capsules(h: int, w: int, starts: torch.Tensor, ends: torch.Tensor,
             radii: torch.Tensor) -> torch.Tensor:
    """``[H,W]`` union of round-capped thick segments (vectorised over segments).

    ``starts``/``ends`` are ``[S,2]`` ``(x, y)`` pixel-centre coordinates, ``radii`` ``[S]`` pixels.
    A pixel is in the mask when its centre lies within ``radius`` of the segment. Computed in
    numpy: single-threaded, so it stays fast inside loader workers and on a busy machine.
    """
    a = starts.numpy().astype(np.float32)[:, :, None, None]  # [S,2,1,1]
    ab = ends.numpy().astype(np.float32)[:, :, None, None] - a
    dx = np.arange(w, dtype=np.float32)[None, None, :] - a[:, 0]  # [S,1,W]
    dy = np.arange(h, dtype=np.float32)[None, :, None] - a[:, 1]  # [S,H,1]
    abx, aby = ab[:, 0], ab[:, 1]  # [S,1,1]
    denom = np.maximum(abx * abx + aby * aby, 1e-8)
    t = np.clip((dx * abx + dy * aby) / denom, 0.0, 1.0)  # [S,H,W]
    dist2 = (dx - t * abx) ** 2 + (dy - t * aby) ** 2
    r2 = radii.numpy().astype(np.float32)[:, None, None] ** 2
    return torch.from_numpy((dist2 <= r2).any(axis=0).astype(np.float32))


def stroke_segments(h: int, w: int, g: torch.Generator, width: tuple[float, float],
                    vertices: tuple[int, int] = (4, 10)) -> tuple[torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """One brush stroke as ``(starts [S,2], ends [S,2], radii [S])``.

    A random walk of ``vertices`` points (steps of 10-30% of the image side, any direction),
    clamped inside the image, drawn with one brush radius (``width`` = diameter range as a
    fraction of the side; at least one pixel).
    """
    side = float(min(h, w))
    n = _randint(g, *vertices)
    start = torch.stack([_uniform(g, 0, w - 1), _uniform(g, 0, h - 1)], dim=1)  # [1,2]
    angles = _uniform(g, 0.0, 2 * math.pi, n - 1)
    lengths = _uniform(g, 0.1 * side, 0.3 * side, n - 1)
    steps = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1) * lengths[:, None]
    points = torch.cat([start, start + torch.cumsum(steps, dim=0)], dim=0)
    points[:, 0].clamp_(0, w - 1)
    points[:, 1].clamp_(0, h - 1)
    radius = max(1.0, float(_uniform(g, width[0], width[1])) * side / 2)
    radii = torch.full((n - 1,), radius)
    return points[:-1], points[1:], radii


def free_form_mask(h: int, w: int, g: torch.Generator, max_strokes: int = 3,
                   width: tuple[float, float] = (0.08, 0.2)) -> torch.Tensor:
    """``[H,W]`` mask of 1..``max_strokes`` brush strokes (each stroke connected)."""
    segs = [stroke_segments(h, w, g, width) for _ in range(_randint(g, 1, max_strokes))]
    starts, ends, radii = (torch.cat(parts) for parts in zip(*segs))
    return capsules(h, w, starts, ends, radii)


def coverage(mask: torch.Tensor) -> torch.Tensor:
    """Hole fraction of ``[...,H,W]`` masks -> ``[...]``."""
    return mask.float().mean(dim=(-2, -1))


@dataclass
class MaskGenerator:
    """Draws hole masks with coverage in ``[min_coverage, max_coverage]`` (see module doc).

    ``kind``: ``box``, ``free_form`` or ``mixed`` (each draw picks one of the two at random).
    """

    kind: str = "mixed"
    min_coverage: float = 0.1
    max_coverage: float = 0.5
    max_strokes: int = 3
    stroke_width: tuple[float, float] = (0.08, 0.2)
    tries: int = 10

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise UserError(f"mask kind '{self.kind}' is not one of {', '.join(MASK_KINDS)}")
        if not 0.0 < self.min_coverage <= self.max_coverage < 1.0:
            raise UserError(
                f"mask coverage range [{self.min_coverage}, {self.max_coverage}] must satisfy "
                "0 < min_coverage <= max_coverage < 1 (a mask must cover something, never all)"
            )
        if self.max_strokes < 1:
            raise UserError(f"mask max_strokes must be >= 1, got {self.max_strokes}")
        lo, hi = self.stroke_width
        if not 0.0 < lo <= hi:
            raise UserError(f"mask stroke_width [{lo}, {hi}] must satisfy 0 < min <= max")

    def in_range(self, mask: torch.Tensor) -> bool:
        c = float(coverage(mask))
        return self.min_coverage <= c <= self.max_coverage and 0.0 < c < 1.0

    def draw_once(self, h: int, w: int, g: torch.Generator) -> torch.Tensor:
        """One raw draw (no coverage check): ``[H,W]``."""
        kind = self.kind
        if kind == "mixed":
            kind = "box" if float(torch.rand(1, generator=g)) < 0.5 else "free_form"
        if kind == "box":
            cov = float(_uniform(g, self.min_coverage, self.max_coverage))
            return box_mask(h, w, cov, g)
        return free_form_mask(h, w, g, self.max_strokes, tuple(self.stroke_width))

    def __call__(self, h: int, w: int, g: torch.Generator | None = None) -> torch.Tensor:
        """A ``[H,W]`` float mask (1 = hole) with coverage in range, or the fallback box."""
        if h * w < 2:
            raise UserError(f"cannot mask a {h}x{w} image: a hole must leave some pixels visible")
        g = g if g is not None else torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,)).item()))
        for _ in range(max(1, self.tries)):
            mask = self.draw_once(h, w, g)
            if self.in_range(mask):
                return mask
        return box_mask(h, w, 0.5 * (self.min_coverage + self.max_coverage), g)

    def batch(self, n: int, h: int, w: int, g: torch.Generator | None = None) -> torch.Tensor:
        """``[N,1,H,W]`` masks drawn one after the other from ``g``."""
        return torch.stack([self(h, w, g) for _ in range(n)])[:, None]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bounding boxes of the holes: ``[B,1,H,W]`` or ``[B,H,W]`` -> ``[B,4]`` float
    ``(x1, y1, x2, y2)`` in pixels, ``x2``/``y2`` exclusive (roi_align convention).

    An empty mask gives the whole image.
    """
    m = masks.reshape(masks.shape[0], masks.shape[-2], masks.shape[-1]) > 0.5
    h, w = m.shape[-2:]
    rows, cols = m.any(dim=2), m.any(dim=1)  # [B,H], [B,W]
    ar_h = torch.arange(h, device=m.device)
    ar_w = torch.arange(w, device=m.device)
    y1 = torch.where(rows, ar_h, h).amin(dim=1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x1 = torch.where(cols, ar_w, w).amin(dim=1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    empty = ~rows.any(dim=1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=m.device)
    return torch.where(empty[:, None], full, boxes)


def fit_box(box: tuple[int, int, int, int] | list[int], h: int, w: int, min_coverage: float,
            max_coverage: float) -> tuple[torch.Tensor, bool]:
    """The ``[H,W]`` mask of ``box`` ``(x1, y1, x2, y2)`` (exclusive ends), rescaled about its
    centre when its coverage is outside ``[min_coverage, max_coverage]`` (an empty box grows to
    ``min_coverage``, a box covering too much shrinks to ``max_coverage``), then shifted inside the
    image. Returns ``(mask, rescaled)``.

    This is the documented fallback for given holes (a face area that fills its whole panel, or
    one with no pixel left after resizing): the hole stays on the face, the image keeps context.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    bw, bh = max(0, x2 - x1), max(0, y2 - y1)
    cov = bw * bh / float(h * w)
    rescaled = not (min_coverage <= cov <= max_coverage and 0 < cov < 1)
    if rescaled:
        target = min_coverage if cov < min_coverage or cov == 0 else max_coverage
        cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
        ratio = bw / bh if bw > 0 and bh > 0 else 1.0
        nh = min(h, max(1, int(round(math.sqrt(target * h * w / ratio)))))
        nw = min(w, max(1, int(round(target * h * w / nh))))
        if nh == h and nw == w:
            nh = max(1, h - 1)
        x1 = int(round(cx - nw / 2))
        y1 = int(round(cy - nh / 2))
        x1, y1 = min(max(x1, 0), w - nw), min(max(y1, 0), h - nh)
        x2, y2 = x1 + nw, y1 + nh
    mask = torch.zeros(h, w)
    mask[y1:y2, x1:x2] = 1.0
    return mask, rescaled
