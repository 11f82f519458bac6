"""The traits of a toy cartoon identity and the per-image look it is drawn with.

An identity is a :class:`FaceTraits` sampled once (:func:`sample_traits`); every image of it
draws those traits under a fresh :class:`Look` (expression, line weight and ink, skin and hair
colour jitter; :func:`sample_look`). The palettes and style names live here too.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
Point = tuple[float, float]

#: Drawing resolution factor; the image is drawn at ``size * SUPERSAMPLE`` then downsampled.
SUPERSAMPLE = 3

HEAD_SHAPES = ("round", "oval", "square", "long", "heart")
HAIR_STYLES = (
    "bald",
    "short",
    "side_part",
    "spiky",
    "long",
    "bob",
    "ponytail",
    "mohawk",
    "curly",
    "afro",
    "buns",
)
EYE_STYLES = ("dots", "ovals", "anime", "sleepy", "lashes", "button")
BROW_STYLES = ("none", "thin", "thick", "angled", "arched", "unibrow")
NOSE_STYLES = ("dot", "triangle", "button", "hook", "long", "clown")
MOUTH_STYLES = ("line", "small", "wide", "lips", "cat", "toothy")
EAR_SHAPES = ("none", "round", "pointy", "big")
GLASSES = ("none", "round", "square")
FACIAL_HAIR = ("none", "moustache", "beard", "goatee", "full")
HATS = ("none", "cap", "top_hat", "bow", "beanie")

SKIN_TONES: tuple[RGB, ...] = (
    (255, 226, 200),
    (250, 208, 170),
    (238, 190, 150),
    (224, 172, 125),
    (200, 140, 95),
    (165, 110, 72),
    (122, 80, 52),
    (255, 238, 225),
    (190, 222, 165),
    (196, 208, 242),
    (236, 236, 228),  # cartoon greens, blues, paper white
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (32, 28, 30),
    (72, 46, 30),
    (122, 78, 42),
    (152, 62, 32),
    (218, 112, 40),
    (242, 206, 110),
    (236, 230, 196),
    (148, 148, 156),
    (242, 242, 242),
    (50, 92, 205),
    (240, 120, 172),
    (60, 162, 92),
    (124, 62, 176),
    (40, 170, 172),
)
EYE_COLOURS: tuple[RGB, ...] = (
    (112, 70, 40),
    (60, 122, 212),
    (60, 152, 82),
    (118, 128, 140),
    (142, 80, 192),
    (212, 150, 40),
    (190, 40, 52),
    (28, 28, 34),
)
ACCESSORY_COLOURS: tuple[RGB, ...] = (
    (28, 28, 32),
    (212, 40, 44),
    (40, 82, 200),
    (44, 150, 70),
    (240, 200, 40),
    (120, 76, 40),
    (130, 60, 170),
    (246, 246, 246),
    (240, 130, 30),
    (236, 110, 170),
)
INKS: tuple[RGB, ...] = ((18, 18, 22), (30, 24, 52), (52, 32, 22), (10, 10, 10), (40, 40, 60))


@dataclass(frozen=True)
class FaceTraits:
    """The stable traits of one cartoon identity; every image of it draws these.

    Geometry is relative: ``head_aspect`` is width / height of the head, ``chin`` stretches the
    lower half, ``eye_size`` / ``eye_spacing`` / ``eye_height`` scale the eyes and place them.
    Colours are RGB tuples.
    """

    head_shape: str
    head_aspect: float
    chin: float
    skin: RGB
    hair_style: str
    hair_colour: RGB
    eye_style: str
    eye_colour: RGB
    eye_size: float
    eye_spacing: float
    eye_height: float
    brow_style: str
    nose_style: str
    mouth_style: str
    lip_colour: RGB
    ear_shape: str
    glasses: str
    glasses_colour: RGB
    facial_hair: str
    hat: str
    hat_colour: RGB
    freckles: bool
    blush: bool


# ---- sampling ----------------------------------------------------------------------------
def pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    """One element of ``options`` (optionally weighted)."""
    if p is not None:
        w = np.asarray(p, dtype=np.float64)
        return options[int(rng.choice(len(options), p=w / w.sum()))]
    return options[int(rng.integers(len(options)))]


def jitter(colour: RGB, rng: np.random.Generator, amount: float) -> RGB:
    """``colour`` with every channel moved by up to ``amount``."""
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))  # type: ignore[return-value]


def mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend ``(1 - t) * a + t * b``."""
    return tuple(round(x * (1.0 - t) + y * t) for x, y in zip(a, b))  # type: ignore[return-value]


def rgba(c: RGB, a: int = 255) -> tuple[int, int, int, int]:
    """``c`` with alpha ``a``."""
    return (c[0], c[1], c[2], a)


def darker(c: RGB, t: float = 0.35) -> RGB:
    """``c`` blended towards black by ``t``."""
    return mix(c, (0, 0, 0), t)


def random_colour(
    rng: np.random.Generator,
    sat: tuple[float, float] = (0.0, 1.0),
    val: tuple[float, float] = (0.15, 1.0),
) -> RGB:
    """A colour drawn uniformly in HSV (hue any, saturation and value in the given ranges)."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return (int(r * 255), int(g * 255), int(b * 255))


_HEAD_ASPECT = {
    "round": (0.92, 1.02),
    "oval": (0.78, 0.86),
    "square": (0.88, 0.98),
    "long": (0.66, 0.74),
    "heart": (0.86, 0.95),
}
_HEAD_CHIN = {
    "round": (0.95, 1.04),
    "oval": (1.04, 1.12),
    "square": (0.94, 1.0),
    "long": (1.08, 1.16),
    "heart": (1.06, 1.14),
}
HEAD_POWER = {
    "round": (2.0, 2.0),
    "oval": (2.0, 2.0),
    "square": (3.2, 3.6),
    "long": (2.3, 2.3),
    "heart": (2.4, 1.45),
}


def sample_traits(rng: np.random.Generator) -> FaceTraits:
    """Sample one identity. Traits are independent, so identities may share a hair colour etc."""
    head = pick(rng, HEAD_SHAPES)
    hair = pick(rng, HAIR_STYLES)
    tall_hair = hair in ("mohawk", "afro", "buns")
    hat = pick(rng, HATS, (0.62, 0.1, 0.08, 0.1, 0.1))
    if tall_hair and hat in ("cap", "top_hat", "beanie"):
        hat = "none"
    skin = pick(rng, SKIN_TONES, (1, 1, 1, 1, 1, 1, 1, 1, 0.4, 0.4, 0.4))
    return FaceTraits(
        head_shape=head,
        head_aspect=float(round(rng.uniform(*_HEAD_ASPECT[head]), 4)),
        chin=float(round(rng.uniform(*_HEAD_CHIN[head]), 4)),
        skin=jitter(skin, rng, 8),
        hair_style=hair,
        hair_colour=jitter(pick(rng, HAIR_COLOURS), rng, 10),
        eye_style=pick(rng, EYE_STYLES),
        eye_colour=pick(rng, EYE_COLOURS),
        eye_size=float(round(rng.uniform(0.85, 1.25), 4)),
        eye_spacing=float(round(rng.uniform(0.32, 0.46), 4)),
        eye_height=float(round(rng.uniform(-0.1, 0.06), 4)),
        brow_style=pick(rng, BROW_STYLES),
        nose_style=pick(rng, NOSE_STYLES, (1, 1, 1, 1, 1, 0.5)),
        mouth_style=pick(rng, MOUTH_STYLES),
        lip_colour=pick(rng, ((200, 50, 60), (226, 96, 120), (160, 40, 70), (236, 130, 110))),
        ear_shape=pick(rng, EAR_SHAPES),
        glasses=pick(rng, GLASSES, (0.7, 0.15, 0.15)),
        glasses_colour=pick(rng, ACCESSORY_COLOURS),
        facial_hair=pick(rng, FACIAL_HAIR, (0.78, 0.07, 0.06, 0.05, 0.04)),
        hat=hat,
        hat_colour=pick(rng, ACCESSORY_COLOURS),
        freckles=bool(rng.random() < 0.25),
        blush=bool(rng.random() < 0.3),
    )


@dataclass(frozen=True)
class Look:
    """Per-image nuisance that the drawing code needs (expression and line style)."""

    mouth: str  # neutral | smile | grin | open | frown | surprised
    eyes: str  # open | closed | squint
    brow_raise: float  # in head half-heights, positive = up
    gaze: Point  # pupil offset, in eye radii
    lw: int  # line width in supersampled pixels
    ink: RGB
    skin: RGB
    hair: RGB


def neutral_look(traits: FaceTraits) -> Look:
    """The canonical look: neutral expression, open eyes, default ink and line weight."""
    return Look(
        "neutral",
        "open",
        0.0,
        (0.0, 0.0),
        round(1.3 * SUPERSAMPLE),
        (18, 18, 22),
        traits.skin,
        traits.hair_colour,
    )


def sample_look(traits: FaceTraits, rng: np.random.Generator) -> Look:
    """A random per-image look of ``traits`` drawn from ``rng``."""
    return Look(
        mouth=pick(
            rng,
            ("neutral", "smile", "grin", "open", "frown", "surprised"),
            (0.25, 0.3, 0.15, 0.12, 0.1, 0.08),
        ),
        eyes=pick(rng, ("open", "closed", "squint"), (0.72, 0.12, 0.16)),
        brow_raise=float(rng.uniform(-0.05, 0.1)),
        gaze=(float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.25, 0.25))),
        lw=max(1, round(rng.uniform(0.7, 2.1) * SUPERSAMPLE)),
        ink=jitter(pick(rng, INKS), rng, 8),
        skin=jitter(traits.skin, rng, 7),
        hair=jitter(traits.hair_colour, rng, 10),
    )
