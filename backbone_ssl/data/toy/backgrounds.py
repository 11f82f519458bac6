"""Scene backgrounds, occluders and the global colour jitter of toy images."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from backbone_ssl.data.toy.traits import RGB, Point, pick, random_colour, rgba

#: Texture contrast of backgrounds around their mean colour (1 = full-contrast patterns).
BACKGROUND_CONTRAST = 0.35
#: Backgrounds lean towards a paper tone by this fraction (scene colours stay varied but muted).
BACKGROUND_PAPER_MIX = 0.5
PAPER_TONE = (225.0, 215.0, 195.0)


def scene_background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random scene background (RGB) of ``w`` x ``h`` pixels, its texture contrast reduced to
    :data:`BACKGROUND_CONTRAST` around its mean colour (as in tight face crops, the face, not the
    scene, carries the strongest texture)."""
    pattern = background_pattern(rng, w, h)
    mean = np.asarray(pattern, dtype=np.float32).mean(axis=(0, 1))
    paper = mean + (np.float32(PAPER_TONE) - mean) * np.float32(BACKGROUND_PAPER_MIX)
    tone = tuple(int(round(c)) for c in paper)
    return Image.blend(Image.new("RGB", (w, h), tone), pattern, BACKGROUND_CONTRAST)


def background_pattern(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random scene pattern (RGB) of ``w`` x ``h`` pixels at full contrast."""
    kind = pick(
        rng,
        ("flat", "gradient", "stripes", "halftone", "speed", "clutter"),
        (0.14, 0.2, 0.16, 0.16, 0.12, 0.22),
    )
    c1 = random_colour(rng)
    c2 = random_colour(rng)
    if kind == "flat":
        return Image.new("RGB", (w, h), c1)
    if kind == "clutter":
        im = Image.new("RGB", (w, h), c1)
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 13))):
            col = random_colour(rng)
            x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
            x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
            k = int(rng.integers(3))
            if k == 0:
                d.rectangle(
                    (x0, y0, x1, y1), fill=col, outline=(20, 20, 20), width=int(rng.integers(0, 5))
                )
            elif k == 1:
                d.ellipse(
                    (x0, y0, x1, y1), fill=col, outline=(20, 20, 20), width=int(rng.integers(0, 5))
                )
            else:
                d.line((x0, y0, x1, y1), fill=col, width=int(rng.integers(2, max(3, w // 12))))
        return im
    side = np.float32(max(w, h))
    yy = np.arange(h, dtype=np.float32)[:, None] / side
    xx = np.arange(w, dtype=np.float32)[None, :] / side
    a = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    if kind == "gradient":
        t = xx * ca + yy * sa
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        t = np.broadcast_to(t, (h, w))
    elif kind == "stripes":
        period = rng.uniform(0.06, 0.25)
        t = ((xx * ca + yy * sa) / period % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32)
    elif kind == "halftone":
        period = rng.uniform(0.04, 0.1)
        u = (xx * ca + yy * sa) / period
        v = (-xx * sa + yy * ca) / period
        du, dv = u - np.round(u), v - np.round(v)
        rad = rng.uniform(0.2, 0.45)
        t = (du * du + dv * dv < rad * rad).astype(np.float32)
    else:  # speed lines around a random focus
        fx, fy = rng.uniform(0.2, 0.8, 2)
        ang = np.arctan2(yy - fy, xx - fx)
        n = int(rng.integers(12, 40))
        t = ((ang / (2 * math.pi) * n) % 1.0 < rng.uniform(0.2, 0.5)).astype(np.float32)
    mask = Image.fromarray((t * np.float32(255)).round().astype(np.uint8), "L")
    return Image.composite(Image.new("RGB", (w, h), c2), Image.new("RGB", (w, h), c1), mask)


def occluder(
    rng: np.random.Generator, w: int, centre: Point, hh: float, ink: RGB, lw: int, skin: RGB
) -> Image.Image:
    """An RGBA layer with one occluder (block, speech balloon or hand) over part of the face."""
    layer = Image.new("RGBA", (w, w), rgba(ink, 0))
    d = ImageDraw.Draw(layer)
    kind = pick(rng, ("block", "balloon", "hand"))
    ang = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.55, 0.95) * hh
    cx, cy = centre[0] + dist * math.cos(ang), centre[1] + dist * math.sin(ang)
    if kind == "block":
        rx, ry = rng.uniform(0.35, 0.7) * hh, rng.uniform(0.35, 0.7) * hh
        d.rectangle(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            fill=rgba(random_colour(rng)),
            outline=rgba(ink),
            width=lw,
        )
    elif kind == "balloon":
        rx, ry = rng.uniform(0.6, 0.9) * hh, rng.uniform(0.4, 0.6) * hh
        tail = [
            (cx - 0.2 * rx, cy + 0.6 * ry),
            (cx + 0.2 * rx, cy + 0.6 * ry),
            (cx + rng.uniform(-0.6, 0.6) * rx, cy + 1.5 * ry),
        ]
        d.polygon(tail, fill=(255, 255, 255, 255), outline=rgba(ink), width=lw)
        d.ellipse(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            fill=(255, 255, 255, 255),
            outline=rgba(ink),
            width=lw,
        )
        for k in range(3):
            y = cy + (k - 1) * 0.3 * ry
            half = rx * (0.6 if k != 1 else 0.7) * rng.uniform(0.7, 1.0)
            d.line((cx - half, y, cx + half, y), fill=(110, 110, 110, 255), width=max(2, lw))
    else:  # hand: palm + four fingers, pointing at the face centre
        r = rng.uniform(0.32, 0.45) * hh
        px, py = cx + 0.4 * r * math.cos(ang), cy + 0.4 * r * math.sin(ang)
        dx, dy = -math.cos(ang), -math.sin(ang)
        for k in range(4):
            off = (k - 1.5) * 0.45 * r
            fx0, fy0 = px - dy * off, py + dx * off
            fl = r * (1.55 if k in (1, 2) else 1.3)
            d.line(
                (fx0, fy0, fx0 + dx * fl, fy0 + dy * fl),
                fill=rgba(ink),
                width=int(0.42 * r) + 2 * lw,
            )
            d.line((fx0, fy0, fx0 + dx * fl, fy0 + dy * fl), fill=rgba(skin), width=int(0.42 * r))
        d.ellipse((px - r, py - r, px + r, py + r), fill=rgba(skin), outline=rgba(ink), width=lw)
    return layer


def colour_jitter(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global colour cast, brightness, contrast and (sometimes) desaturation of ``[H,W,3]``."""
    x = arr.astype(np.float32)
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    bright = np.float32(rng.uniform(0.8, 1.15))
    contrast = np.float32(rng.uniform(0.75, 1.15))
    x = x * cast * bright
    m = x.mean()
    x = (x - m) * contrast + m
    if rng.random() < 0.08:
        g = x.mean(axis=2, keepdims=True)
        x = x + (g - x) * np.float32(rng.uniform(0.6, 1.0))
    return x.round().clip(0, 255).astype(np.uint8)
