"""Rendering one toy face image: draw, pose, occlude, composite on a background, downsample."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from backbone_ssl.data.toy.backgrounds import colour_jitter, occluder, scene_background
from backbone_ssl.data.toy.parts import FacePainter
from backbone_ssl.data.toy.traits import (
    SUPERSAMPLE,
    FaceTraits,
    Point,
    neutral_look,
    rgba,
    sample_look,
)

#: Fraction of images with a partial occlusion (block, speech balloon or hand).
OCCLUSION_P = 0.25


def _pose_matrix(w: int, angle: float, scale: float, shift: Point) -> tuple[float, ...]:
    """Inverse affine coefficients (output -> input) for PIL: rotate and scale about the
    centre, then shift."""
    c = w / 2.0
    a = math.cos(math.radians(angle)) / scale
    b = math.sin(math.radians(angle)) / scale
    tx, ty = c + shift[0], c + shift[1]
    return (a, b, c - a * tx - b * ty, -b, a, c + b * tx - a * ty)


def _render_rgba(
    traits: FaceTraits, rng: np.random.Generator, size: int, nuisance: bool, clip_occluder: bool
) -> Image.Image:
    """The posed face (plus occluder) as RGBA at ``size * SUPERSAMPLE``, transparent outside.

    With ``clip_occluder`` the occluder is kept only where the face is opaque.
    """
    w = size * SUPERSAMPLE
    look = sample_look(traits, rng) if nuisance else neutral_look(traits)
    layer = Image.new("RGBA", (w, w), rgba(look.ink, 0))
    painter = FacePainter(layer, traits, look)
    painter.draw()
    if not nuisance:
        return layer
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-20, 20))
    scale = float(rng.uniform(0.85, 1.1))
    shift = (float(rng.uniform(-0.08, 0.08) * w), float(rng.uniform(-0.08, 0.08) * w))
    layer = layer.transform(
        (w, w),
        Image.Transform.AFFINE,
        _pose_matrix(w, angle, scale, shift),
        resample=Image.Resampling.BILINEAR,
    )
    if rng.random() < OCCLUSION_P:
        c = w / 2.0
        fx = c + scale * (painter.cx - c) + shift[0]
        fy = c + scale * (painter.cy - c) + shift[1]
        occ = occluder(rng, w, (fx, fy), scale * painter.hh, look.ink, look.lw, look.skin)
        if clip_occluder:
            alpha = np.minimum(np.asarray(occ.getchannel("A")), np.asarray(layer.getchannel("A")))
            occ.putalpha(Image.fromarray(alpha, "L"))
        layer = Image.alpha_composite(layer, occ)
    return layer


def render_face(
    traits: FaceTraits,
    rng: np.random.Generator,
    size: int = 64,
    *,
    nuisance: bool = True,
    background: bool = True,
) -> Image.Image:
    """Draw one ``size`` x ``size`` image of this identity.

    With ``nuisance`` (the default) ``rng`` draws the per-image variation: pose (rotation within
    +-20 degrees, shift, scale, mirror), expression (mouth, eyes open/closed/squint, brow raise,
    gaze), line weight and ink, background (flat, gradient, stripes, halftone dots, speed lines or
    clutter), a global colour cast / brightness / contrast jitter and, in ``OCCLUSION_P`` of the
    images, an occluder (block, speech balloon or hand). Without it: a canonical upright neutral
    face on a plain light background.

    Returns RGB, or with ``background=False`` RGBA that is transparent outside the head, hair and
    hat (occluders are clipped to the face), for pasting into comic panels.
    """
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    w = size * SUPERSAMPLE
    face = _render_rgba(traits, rng, size, nuisance, clip_occluder=not background)
    if not background:
        small = face.resize((size, size), Image.Resampling.LANCZOS)
        if nuisance:
            arr = np.asarray(small).copy()
            arr[..., :3] = colour_jitter(arr[..., :3], rng)
            small = Image.fromarray(arr, "RGBA")
        return small
    if nuisance:
        bg = scene_background(rng, w, w).convert("RGBA")
    else:
        bg = Image.new("RGBA", (w, w), (236, 236, 232, 255))
    scene = (
        Image.alpha_composite(bg, face)
        .convert("RGB")
        .resize((size, size), Image.Resampling.LANCZOS)
    )
    if nuisance:
        scene = Image.fromarray(colour_jitter(np.asarray(scene), rng), "RGB")
    return scene


def render_scene(
    traits: FaceTraits, rng: np.random.Generator, size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A test image: a larger random scene with the face pasted at a random place, and its box."""
    side = round(size * rng.uniform(1.25, 1.8))
    h = round(side * rng.uniform(0.85, 1.15))
    h = max(h, size + 1)
    w = max(side, size + 1)
    bg = scene_background(rng, w * SUPERSAMPLE, h * SUPERSAMPLE).resize(
        (w, h), Image.Resampling.LANCZOS
    )
    face = render_face(traits, rng, size, nuisance=True, background=False)
    x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    canvas = bg.convert("RGBA")
    canvas.alpha_composite(face, (x, y))
    out = Image.fromarray(colour_jitter(np.asarray(canvas.convert("RGB")), rng), "RGB")
    return out, (x, y, x + size, y + size)
