"""Procedurally drawn cartoon faces: the embedded default data set (``backbone-ssl toy faces``).

An identity is a :class:`FaceTraits` sampled once (head shape, skin, hair style and colour, eyes,
brows, nose, mouth, ears, glasses, facial hair, hat, freckles, blush). Every image of it redraws
those stable traits under per-image nuisance: pose (rotation, shift, scale, mirror), expression
(mouth, eyes, brows, gaze), line weight and ink colour, a random background (flat, gradient,
stripes, halftone dots, speed lines, clutter), a global colour cast / brightness / contrast jitter
and, in some images, a partial occlusion (a block, a speech balloon or a hand). A human recognises
the character from its traits; nearest neighbour on raw pixels does poorly
(:func:`raw_pixel_nn1`), which is the point: the demo shows what pretraining adds.

:func:`write_toy_faces` writes the real iCartoonFace recognition layout (see ``DESIGN.md``) plus a
``split/{train,val,test}/<identity>/`` view of the training identities. Drawing happens at
``SUPERSAMPLE`` x the output size and is downsampled with LANCZOS (anti-aliasing). All randomness
comes from ``numpy.random.Generator`` streams keyed by ``(seed, stream, identity, image)``, so the
same seed writes byte-identical files.
"""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backbone_ssl.errors import UserError

RGB = tuple[int, int, int]
Point = tuple[float, float]

#: Drawing resolution factor; the image is drawn at ``size * SUPERSAMPLE`` then downsampled.
SUPERSAMPLE = 3
#: Fixed JPEG settings: with no EXIF and no timestamps, the same pixels give the same bytes.
JPEG_QUALITY = 92
#: Fraction of images with a partial occlusion (block, speech balloon or hand).
OCCLUSION_P = 0.25
#: Texture contrast of backgrounds around their mean colour (1 = full-contrast patterns).
BACKGROUND_CONTRAST = 0.35
#: Backgrounds lean towards a paper tone by this fraction (scene colours stay varied but muted).
BACKGROUND_PAPER_MIX = 0.5
PAPER_TONE = (225.0, 215.0, 195.0)
#: Version of the drawing code, recorded in ``toy_faces.json``.
TOY_FACES_VERSION = 1

TRAIN_SUBDIR = "personai_icartoonface_rectrain/icartoonface_rectrain"
TEST_SUBDIR = "personai_icartoonface_rectest/icartoonface_rectest"
TEST_INFO = "personai_icartoonface_rectest/icartoonface_rectest_info.txt"
SPLIT_TRAIN = "split/train"
SPLIT_TEST = "split/test"
SPLIT_VAL = "split/val"
SUMMARY_NAME = "toy_faces.json"

# Random streams (first SeedSequence word after the seed).
_STREAM_TRAITS, _STREAM_IMAGE, _STREAM_SPLIT, _STREAM_TEST, _STREAM_ORDER = range(5)

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
_INKS: tuple[RGB, ...] = ((18, 18, 22), (30, 24, 52), (52, 32, 22), (10, 10, 10), (40, 40, 60))


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


# --------------------------------------------------------------------------------------------
# Sampling


def _pick(rng: np.random.Generator, options: Sequence, p: Sequence[float] | None = None):
    """One element of ``options`` (optionally weighted)."""
    if p is not None:
        w = np.asarray(p, dtype=np.float64)
        return options[int(rng.choice(len(options), p=w / w.sum()))]
    return options[int(rng.integers(len(options)))]


def _jitter(colour: RGB, rng: np.random.Generator, amount: float) -> RGB:
    """``colour`` with every channel moved by up to ``amount``."""
    c = np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    """Linear blend ``(1 - t) * a + t * b``."""
    return tuple(round(x * (1.0 - t) + y * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _random_colour(
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
_HEAD_POWER = {
    "round": (2.0, 2.0),
    "oval": (2.0, 2.0),
    "square": (3.2, 3.6),
    "long": (2.3, 2.3),
    "heart": (2.4, 1.45),
}


def sample_traits(rng: np.random.Generator) -> FaceTraits:
    """Sample one identity. Traits are independent, so identities may share a hair colour etc."""
    head = _pick(rng, HEAD_SHAPES)
    hair = _pick(rng, HAIR_STYLES)
    tall_hair = hair in ("mohawk", "afro", "buns")
    hat = _pick(rng, HATS, (0.62, 0.1, 0.08, 0.1, 0.1))
    if tall_hair and hat in ("cap", "top_hat", "beanie"):
        hat = "none"
    skin = _pick(rng, SKIN_TONES, (1, 1, 1, 1, 1, 1, 1, 1, 0.4, 0.4, 0.4))
    return FaceTraits(
        head_shape=head,
        head_aspect=float(round(rng.uniform(*_HEAD_ASPECT[head]), 4)),
        chin=float(round(rng.uniform(*_HEAD_CHIN[head]), 4)),
        skin=_jitter(skin, rng, 8),
        hair_style=hair,
        hair_colour=_jitter(_pick(rng, HAIR_COLOURS), rng, 10),
        eye_style=_pick(rng, EYE_STYLES),
        eye_colour=_pick(rng, EYE_COLOURS),
        eye_size=float(round(rng.uniform(0.85, 1.25), 4)),
        eye_spacing=float(round(rng.uniform(0.32, 0.46), 4)),
        eye_height=float(round(rng.uniform(-0.1, 0.06), 4)),
        brow_style=_pick(rng, BROW_STYLES),
        nose_style=_pick(rng, NOSE_STYLES, (1, 1, 1, 1, 1, 0.5)),
        mouth_style=_pick(rng, MOUTH_STYLES),
        lip_colour=_pick(rng, ((200, 50, 60), (226, 96, 120), (160, 40, 70), (236, 130, 110))),
        ear_shape=_pick(rng, EAR_SHAPES),
        glasses=_pick(rng, GLASSES, (0.7, 0.15, 0.15)),
        glasses_colour=_pick(rng, ACCESSORY_COLOURS),
        facial_hair=_pick(rng, FACIAL_HAIR, (0.78, 0.07, 0.06, 0.05, 0.04)),
        hat=hat,
        hat_colour=_pick(rng, ACCESSORY_COLOURS),
        freckles=bool(rng.random() < 0.25),
        blush=bool(rng.random() < 0.3),
    )


# --------------------------------------------------------------------------------------------
# Per-image nuisance


@dataclass(frozen=True)
class _Look:
    """Per-image nuisance that the drawing code needs (expression and line style)."""

    mouth: str  # neutral | smile | grin | open | frown | surprised
    eyes: str  # open | closed | squint
    brow_raise: float  # in head half-heights, positive = up
    gaze: Point  # pupil offset, in eye radii
    lw: int  # line width in supersampled pixels
    ink: RGB
    skin: RGB
    hair: RGB


def _neutral_look(traits: FaceTraits) -> _Look:
    return _Look(
        "neutral",
        "open",
        0.0,
        (0.0, 0.0),
        round(1.3 * SUPERSAMPLE),
        (18, 18, 22),
        traits.skin,
        traits.hair_colour,
    )


def _sample_look(traits: FaceTraits, rng: np.random.Generator) -> _Look:
    return _Look(
        mouth=_pick(
            rng,
            ("neutral", "smile", "grin", "open", "frown", "surprised"),
            (0.25, 0.3, 0.15, 0.12, 0.1, 0.08),
        ),
        eyes=_pick(rng, ("open", "closed", "squint"), (0.72, 0.12, 0.16)),
        brow_raise=float(rng.uniform(-0.05, 0.1)),
        gaze=(float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.25, 0.25))),
        lw=max(1, round(rng.uniform(0.7, 2.1) * SUPERSAMPLE)),
        ink=_jitter(_pick(rng, _INKS), rng, 8),
        skin=_jitter(traits.skin, rng, 7),
        hair=_jitter(traits.hair_colour, rng, 10),
    )


# --------------------------------------------------------------------------------------------
# Drawing


def _rgba(c: RGB, a: int = 255) -> tuple[int, int, int, int]:
    return (c[0], c[1], c[2], a)


def _darker(c: RGB, t: float = 0.35) -> RGB:
    return _mix(c, (0, 0, 0), t)


class _Painter:
    """Draws one face (upright, centred) onto an RGBA layer of side ``w``."""

    def __init__(self, layer: Image.Image, traits: FaceTraits, look: _Look) -> None:
        self.d = ImageDraw.Draw(layer)
        self.t = traits
        self.look = look
        w = layer.width
        self.cx, self.cy = 0.5 * w, 0.54 * w
        self.hh = 0.33 * w
        self.hw = self.hh * traits.head_aspect
        self.p_top, self.p_bot = _HEAD_POWER[traits.head_shape]
        self.lw = look.lw
        self.ink = _rgba(look.ink)
        hh = self.hh
        self.ex = traits.eye_spacing * max(self.hw, 0.8 * hh)
        self.ey = self.cy + traits.eye_height * hh
        self.er = min(0.13 * hh * traits.eye_size, 0.62 * self.ex)
        self.my = self.cy + 0.5 * hh * traits.chin
        self.ny = self.cy + 0.25 * hh + 0.4 * (self.my - self.cy - 0.5 * hh)

    # geometry -------------------------------------------------------------------------------
    def point(self, theta: float, scale: float = 1.0) -> Point:
        """Point of the head contour at ``theta`` degrees (0 = right, 90 = top), scaled out."""
        t = math.radians(theta)
        c, s = math.cos(t), math.sin(t)
        top = s >= 0
        p = self.p_top if top else self.p_bot
        ry = self.hh if top else self.hh * self.t.chin
        x = self.cx + scale * self.hw * math.copysign(abs(c) ** (2.0 / p), c)
        y = self.cy - scale * ry * math.copysign(abs(s) ** (2.0 / p), s)
        return (x, y)

    def arc(self, a0: float, a1: float, n: int, scale: float = 1.0) -> list[Point]:
        return [self.point(a, scale) for a in np.linspace(a0, a1, n)]

    def rel(self, u: float, v: float) -> Point:
        """Point at ``u`` head half-widths right and ``v`` head half-heights down of the centre."""
        return (self.cx + u * self.hw, self.cy + v * self.hh)

    # primitives -----------------------------------------------------------------------------
    def shape(
        self, pts: list[Point], fill: RGB | None, outline: bool = True, width: int | None = None
    ) -> None:
        if fill is not None:
            self.d.polygon(pts, fill=_rgba(fill))
        if outline:
            self.d.line(pts + [pts[0]], fill=self.ink, width=width or self.lw, joint="curve")

    def ellipse(
        self,
        c: Point,
        rx: float,
        ry: float,
        fill: RGB | None,
        outline: bool = True,
        width: int | None = None,
    ) -> None:
        box = (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry)
        self.d.ellipse(
            box,
            fill=None if fill is None else _rgba(fill),
            outline=self.ink if outline else None,
            width=(width or self.lw) if outline else 0,
        )

    def stroke(self, pts: list[Point], colour: RGB | None = None, width: int | None = None) -> None:
        self.d.line(
            pts,
            fill=self.ink if colour is None else _rgba(colour),
            width=width or self.lw,
            joint="curve",
        )

    # the face -------------------------------------------------------------------------------
    def draw(self) -> None:
        self.hair_back()
        self.ears()
        self.shape(self.arc(0, 360, 72), self.look.skin)
        self.cheeks()
        self.beard()
        self.nose()
        self.mouth()
        self.moustache()
        self.eyes()
        self.brows()
        self.hair_front()
        self.glasses()
        self.hat()

    def hair_back(self) -> None:
        st, hair, hw, hh = self.t.hair_style, self.look.hair, self.hw, self.hh
        if st == "long":
            pts = self.arc(0, 180, 19, 1.13)
            pts += [
                self.rel(-1.2, 0.6),
                self.rel(-1.12, 1.25),
                self.rel(-0.6, 1.32),
                self.rel(0.0, 1.22),
                self.rel(0.6, 1.32),
                self.rel(1.12, 1.25),
                self.rel(1.2, 0.6),
            ]
            self.shape(pts, hair)
        elif st == "bob":
            pts = self.arc(0, 180, 19, 1.15)
            pts += [
                self.rel(-1.18, 0.62),
                self.rel(-1.05, 0.72),
                self.rel(1.05, 0.72),
                self.rel(1.18, 0.62),
            ]
            self.shape(pts, hair)
        elif st == "afro":
            r = 1.42 * max(hw, 0.85 * hh)
            cx, cy = self.cx, self.cy - 0.25 * hh
            pts = [
                (
                    cx + r * (1 + 0.06 * math.cos(9 * a)) * math.cos(a),
                    cy - r * (1 + 0.06 * math.cos(9 * a)) * math.sin(a),
                )
                for a in np.linspace(0, 2 * math.pi, 73)[:-1]
            ]
            self.shape(pts, hair)
        elif st == "curly":
            for a in np.linspace(-35, 215, 13):
                self.ellipse(self.point(a, 1.06), 0.24 * hh, 0.24 * hh, hair)
        elif st == "ponytail":
            base = self.point(35, 1.0)
            tip = self.rel(1.75, 0.55)
            mid = ((base[0] + tip[0]) / 2 + 0.2 * hw, (base[1] + tip[1]) / 2 - 0.2 * hh)
            pts = [self.point(55, 1.05), mid, tip, self.rel(1.35, 0.05), self.point(15, 1.0)]
            self.shape(pts, hair)
            self.ellipse(self.point(35, 1.08), 0.1 * hh, 0.1 * hh, _darker(hair, 0.2))
        elif st == "buns":
            for a in (50, 130):
                self.ellipse(self.point(a, 1.18), 0.33 * hh, 0.33 * hh, hair)

    def ears(self) -> None:
        shape, skin, hh = self.t.ear_shape, self.look.skin, self.hh
        if shape == "none":
            return
        inner = _darker(skin, 0.25)
        for side in (-1, 1):
            x, y = self.point(0 if side > 0 else 180, 0.97)
            y = self.ey + 0.08 * hh
            if shape == "pointy":
                pts = [
                    (x, y - 0.16 * hh),
                    (x + side * 0.42 * hh, y - 0.36 * hh),
                    (x + side * 0.1 * hh, y + 0.18 * hh),
                ]
                self.shape(pts, skin)
            else:
                r = 0.15 if shape == "round" else 0.24
                c = (x + side * 0.5 * r * hh, y)
                self.ellipse(c, r * hh, 1.35 * r * hh, skin)
                self.ellipse(
                    (c[0] + side * 0.2 * r * hh, y),
                    0.45 * r * hh,
                    0.8 * r * hh,
                    inner,
                    outline=False,
                )

    def cheeks(self) -> None:
        skin, hh, hw = self.look.skin, self.hh, self.hw
        y = self.ey + 0.32 * hh
        for side in (-1, 1):
            x = self.cx + side * self.ex * 1.15
            if self.t.blush:
                self.ellipse(
                    (x, y), 0.15 * hh, 0.085 * hh, _mix(skin, (240, 90, 110), 0.5), outline=False
                )
            if self.t.freckles:
                r = 0.028 * hh + 0.25 * self.lw
                for du, dv in (
                    (-0.1, -0.03),
                    (0.0, 0.04),
                    (0.1, -0.02),
                    (0.04, 0.11),
                    (-0.07, 0.1),
                ):
                    self.ellipse(
                        (x + du * hw * 1.2, y + dv * hh),
                        r,
                        r,
                        _mix(skin, (110, 55, 25), 0.55),
                        outline=False,
                    )

    def beard(self) -> None:
        fh, hair, hh = self.t.facial_hair, self.look.hair, self.hh
        if fh in ("beard", "full"):
            pts = self.arc(192, 348, 25, 1.07)
            pts += [
                self.rel(0.8, 0.18),
                self.rel(0.4, (self.my - self.cy) / hh - 0.14),
                self.rel(0.0, (self.my - self.cy) / hh - 0.2),
                self.rel(-0.4, (self.my - self.cy) / hh - 0.14),
                self.rel(-0.8, 0.18),
            ]
            self.shape(pts, hair)
        elif fh == "goatee":
            v = (self.my - self.cy) / hh
            pts = [
                self.rel(-0.2, v + 0.08),
                self.rel(0.2, v + 0.08),
                self.point(282, 1.02),
                self.point(270, 1.1),
                self.point(258, 1.02),
            ]
            self.shape(pts, hair)

    def moustache(self) -> None:
        if self.t.facial_hair not in ("moustache", "full"):
            return
        hh, hair = self.hh, self.look.hair
        y = self.my - 0.14 * hh
        for side in (-1, 1):
            pts = [
                (self.cx, y - 0.05 * hh),
                (self.cx + side * 0.3 * hh, y - 0.06 * hh),
                (self.cx + side * 0.42 * hh, y + 0.06 * hh),
                (self.cx + side * 0.2 * hh, y + 0.06 * hh),
                (self.cx, y + 0.04 * hh),
            ]
            self.shape(pts, hair)

    def nose(self) -> None:
        st, hh, cx, y = self.t.nose_style, self.hh, self.cx, self.ny
        dark = _darker(self.look.skin, 0.3)
        if st == "dot":
            self.ellipse((cx, y), 0.05 * hh, 0.04 * hh, dark, outline=False)
        elif st == "triangle":
            self.stroke(
                [
                    (cx, y - 0.16 * hh),
                    (cx - 0.09 * hh, y + 0.05 * hh),
                    (cx + 0.04 * hh, y + 0.06 * hh),
                ]
            )
        elif st == "button":
            self.ellipse((cx, y), 0.08 * hh, 0.07 * hh, _darker(self.look.skin, 0.08))
        elif st == "hook":
            self.stroke(
                [
                    (cx - 0.02 * hh, y - 0.2 * hh),
                    (cx + 0.1 * hh, y + 0.03 * hh),
                    (cx - 0.04 * hh, y + 0.07 * hh),
                ]
            )
        elif st == "long":
            self.stroke([(cx, y - 0.22 * hh), (cx + 0.02 * hh, y + 0.06 * hh)])
            self.stroke([(cx - 0.08 * hh, y + 0.08 * hh), (cx + 0.08 * hh, y + 0.08 * hh)])
        elif st == "clown":
            self.ellipse((cx, y), 0.12 * hh, 0.11 * hh, (222, 52, 52))

    def mouth(self) -> None:
        st, expr, hh, cx, y = self.t.mouth_style, self.look.mouth, self.hh, self.cx, self.my
        half = {"small": 0.12, "wide": 0.32, "cat": 0.16}.get(st, 0.22) * hh
        dark, red = (90, 24, 30), (214, 90, 100)
        lips = self.t.lip_colour
        if expr == "neutral":
            if st == "cat":
                self.stroke(
                    [
                        (cx - half, y - 0.04 * hh),
                        (cx - half / 2, y + 0.03 * hh),
                        (cx, y - 0.02 * hh),
                        (cx + half / 2, y + 0.03 * hh),
                        (cx + half, y - 0.04 * hh),
                    ]
                )
            elif st == "lips":
                self.ellipse((cx, y), half, 0.07 * hh, lips)
                self.stroke([(cx - half, y), (cx + half, y)])
            else:
                self.stroke([(cx - half, y), (cx + half, y)])
        elif expr == "smile":
            box = (cx - half, y - 0.12 * hh, cx + half, y + 0.08 * hh)
            if st == "lips":
                self.d.chord(box, 0, 180, fill=_rgba(lips), outline=self.ink, width=self.lw)
            else:
                self.d.arc(box, 15, 165, fill=self.ink, width=self.lw)
        elif expr == "frown":
            box = (cx - half, y + 0.0 * hh, cx + half, y + 0.16 * hh)
            self.d.arc(box, 200, 340, fill=self.ink, width=self.lw)
        elif expr == "grin":
            box = (cx - half * 1.1, y - 0.12 * hh, cx + half * 1.1, y + 0.12 * hh)
            self.d.chord(box, 0, 180, fill=_rgba(dark), outline=self.ink, width=self.lw)
            self.d.rectangle(
                (cx - half * 0.9, y, cx + half * 0.9, y + 0.035 * hh), fill=_rgba((250, 250, 250))
            )
        elif expr == "open":
            self.ellipse((cx, y + 0.03 * hh), half * 0.75, 0.11 * hh, dark)
            self.ellipse((cx, y + 0.09 * hh), half * 0.4, 0.04 * hh, red, outline=False)
        else:  # surprised
            self.ellipse((cx, y + 0.03 * hh), 0.07 * hh, 0.09 * hh, dark)
        if st == "toothy" and expr in ("neutral", "smile", "frown"):
            tw = 0.07 * hh
            self.d.rectangle(
                (cx - tw, y + 0.01 * hh, cx + tw, y + 0.1 * hh),
                fill=_rgba((250, 250, 250)),
                outline=self.ink,
                width=max(1, self.lw // 2),
            )

    def eyes(self) -> None:
        st, state, er = self.t.eye_style, self.look.eyes, self.er
        col, gx, gy = self.t.eye_colour, self.look.gaze[0] * er, self.look.gaze[1] * er
        white, black = (252, 252, 250), (16, 16, 20)
        for side in (-1, 1):
            c = (self.cx + side * self.ex, self.ey)
            if st == "anime":
                rx, ry = 1.05 * er, 1.5 * er
            elif st == "dots":
                rx, ry = 0.5 * er, 0.65 * er
            elif st == "button":
                rx, ry = 0.8 * er, 0.8 * er
            else:
                rx, ry = 0.85 * er, 1.1 * er
            if state == "closed":
                box = (c[0] - rx, c[1] - ry * 0.6, c[0] + rx, c[1] + ry * 0.6)
                self.d.arc(
                    box, 200, 340, fill=self.ink, width=self.lw + (1 if st == "anime" else 0)
                )
                continue
            if state == "squint":
                ry *= 0.45
            if st == "dots":
                self.ellipse(c, rx, ry, black, outline=False)
                continue
            if st == "button":
                self.ellipse(c, rx, ry, col)
                self.ellipse(
                    (c[0] + 0.2 * gx, c[1] + 0.2 * gy), 0.38 * rx, 0.38 * ry, black, outline=False
                )
                self.ellipse(
                    (c[0] - 0.35 * rx, c[1] - 0.35 * ry), 0.2 * rx, 0.2 * ry, white, outline=False
                )
                continue
            self.ellipse(c, rx, ry, white)
            p = (c[0] + gx, c[1] + gy)
            if st == "anime":
                self.ellipse(p, 0.72 * rx, min(0.85 * ry, 1.1 * er), col, outline=False)
                self.ellipse(p, 0.36 * rx, min(0.45 * ry, 0.6 * er), black, outline=False)
                self.ellipse(
                    (p[0] - 0.3 * rx, p[1] - 0.35 * ry), 0.22 * rx, 0.22 * rx, white, outline=False
                )
                self.d.arc(
                    (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry),
                    200,
                    340,
                    fill=self.ink,
                    width=int(self.lw * 2),
                )
            else:
                self.ellipse(p, 0.5 * rx, min(0.5 * rx, ry * 0.9), col, outline=False)
                self.ellipse(p, 0.24 * rx, min(0.24 * rx, ry * 0.5), black, outline=False)
            if st == "sleepy":
                lid = (
                    [(c[0] - rx * 1.05, c[1])]
                    + [
                        (c[0] + rx * 1.05 * math.cos(a), c[1] - ry * 1.05 * math.sin(a))
                        for a in np.linspace(math.pi, 0, 9)
                    ]
                    + [(c[0] + rx * 1.05, c[1])]
                )
                self.shape(lid, _darker(self.look.skin, 0.12), outline=False)
                self.stroke([(c[0] - rx, c[1]), (c[0] + rx, c[1])], width=self.lw + 1)
                self.d.ellipse(
                    (c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry), outline=self.ink, width=self.lw
                )
            if st == "lashes":
                for a in (20, 45, 70):
                    a = math.radians(a if side > 0 else 180 - a)
                    x0, y0 = c[0] + rx * math.cos(a), c[1] - ry * math.sin(a)
                    self.stroke(
                        [(x0, y0), (x0 + 0.45 * er * math.cos(a), y0 - 0.45 * er * math.sin(a))]
                    )

    def brows(self) -> None:
        st = self.t.brow_style
        if st == "none":
            return
        hh, er = self.hh, self.er
        colour = _darker(self.look.hair, 0.45) if self.t.hair_style != "bald" else self.look.ink
        top = 1.5 * er if self.t.eye_style == "anime" else 1.1 * er
        y = self.ey - top - 0.1 * hh - self.look.brow_raise * hh
        half = max(0.9 * er, 0.11 * hh)
        if st == "unibrow":
            self.stroke(
                [
                    (self.cx - self.ex - half, y),
                    (self.cx, y + 0.03 * hh),
                    (self.cx + self.ex + half, y),
                ],
                colour,
                int(self.lw * 2.2),
            )
            return
        for side in (-1, 1):
            x = self.cx + side * self.ex
            inner, outer = x - side * half, x + side * half
            if st == "thin":
                pts = [(inner, y), (x, y - 0.03 * hh), (outer, y + 0.01 * hh)]
                w = self.lw
            elif st == "thick":
                pts = [(inner, y), (x, y - 0.03 * hh), (outer, y)]
                w = int(self.lw * 2.6) + 1
            elif st == "angled":
                pts = [(inner, y + 0.06 * hh), (outer, y - 0.05 * hh)]
                w = int(self.lw * 1.8) + 1
            else:  # arched
                pts = [(inner, y + 0.02 * hh), (x, y - 0.08 * hh), (outer, y + 0.03 * hh)]
                w = int(self.lw * 1.4) + 1
            self.stroke(pts, colour, w)

    def hair_front(self) -> None:
        st, hair, hh = self.t.hair_style, self.look.hair, self.hh
        if st == "bald":
            for side in (-1, 1):
                a0, a1 = (150, 205) if side < 0 else (-25, 30)
                outer = self.arc(a0, a1, 8, 1.08)
                inner = self.arc(a1, a0, 8, 0.9)
                self.shape(outer + inner, hair)
            hx, hy = self.point(115, 0.78)
            self.ellipse(
                (hx, hy),
                0.16 * hh,
                0.06 * hh,
                _mix(self.look.skin, (255, 255, 255), 0.6),
                outline=False,
            )
            return
        if st == "mohawk":
            n = 5
            thetas = np.linspace(70, 110, 2 * n + 1)
            pts = [
                self.point(a, 0.97 if i % 2 == 0 else 1.75 - 0.1 * abs(i - n) / n)
                for i, a in enumerate(thetas)
            ]
            self.shape(pts, hair)
            return
        us = np.linspace(-0.92, 0.92, 11)
        scale, left, right = 1.09, 198.0, -18.0
        if st == "short":
            vs = -0.48 + 0.22 * us**2
        elif st == "side_part":
            vs = -0.66 + 0.32 * (us + 1) + 0.05 * np.cos(5 * us)
        elif st == "spiky":
            vs = np.where(np.arange(len(us)) % 2 == 0, -0.32, -0.55)
        elif st == "long":
            vs = -0.78 + 0.5 * np.abs(us)
            scale = 1.13
        elif st == "bob":
            vs = np.full_like(us, -0.3)
            scale = 1.15
        elif st in ("ponytail", "buns"):
            vs = -0.7 + 0.2 * us**2
            scale = 1.06
        elif st == "afro":
            vs = -0.55 + 0.15 * us**2
            scale = 1.05
        else:  # curly
            vs = -0.5 + 0.15 * us**2 + 0.06 * np.cos(9 * us)
            scale = 1.1
        if st == "spiky":
            thetas = np.linspace(right, left, 15)
            outer = [self.point(a, 1.06 if i % 2 == 0 else 1.4) for i, a in enumerate(thetas)]
        else:
            outer = self.arc(right, left, 23, scale)
        fringe = [self.rel(float(u), float(v)) for u, v in zip(us, vs)]
        pts = outer + [self.point(left, 0.98)] + fringe + [self.point(right, 0.98)]
        self.shape(pts, hair)
        if st == "side_part":
            self.stroke([self.rel(-0.45, -0.62), self.rel(-0.35, -1.02)], _darker(hair, 0.35))
        elif st == "long":
            self.stroke([self.rel(0.0, -0.75), self.rel(0.0, -1.1)], _darker(hair, 0.35))

    def glasses(self) -> None:
        kind = self.t.glasses
        if kind == "none":
            return
        colour = self.t.glasses_colour
        ry = (1.5 if self.t.eye_style == "anime" else 1.1) * self.er
        r = max(1.35 * ry, 0.2 * self.hh)
        rx = min(r, 0.92 * self.ex)
        w = int(self.lw * 1.5) + 2
        for side in (-1, 1):
            c = (self.cx + side * self.ex, self.ey)
            box = (c[0] - rx, c[1] - r * 0.85, c[0] + rx, c[1] + r * 0.85)
            if kind == "round":
                self.d.ellipse(box, outline=_rgba(colour), width=w)
            else:
                self.d.rounded_rectangle(box, radius=0.2 * r, outline=_rgba(colour), width=w)
            edge = self.point(0 if side > 0 else 180, 1.0)
            self.stroke(
                [(c[0] + side * rx, self.ey - 0.2 * r), (edge[0], self.ey - 0.3 * r)], colour, w
            )
        self.stroke(
            [
                (self.cx - self.ex + rx, self.ey - 0.1 * r),
                (self.cx, self.ey - 0.25 * r),
                (self.cx + self.ex - rx, self.ey - 0.1 * r),
            ],
            colour,
            w,
        )

    def hat(self) -> None:
        kind, colour, hh, hw = self.t.hat, self.t.hat_colour, self.hh, self.hw
        if kind == "none":
            return
        band = _darker(colour, 0.45) if sum(colour) > 200 else (235, 235, 235)
        if kind == "cap":
            dome = self.arc(22, 158, 21, 1.14)
            self.shape(dome, colour)
            y = dome[0][1]
            brim = [
                (self.cx - 0.2 * hw, y - 0.05 * hh),
                (self.cx + 1.55 * hw, y - 0.02 * hh),
                (self.cx + 1.5 * hw, y + 0.12 * hh),
                (self.cx - 0.2 * hw, y + 0.1 * hh),
            ]
            self.shape(brim, _darker(colour, 0.2))
            top = self.point(90, 1.14)
            self.ellipse(top, 0.07 * hh, 0.05 * hh, band)
        elif kind == "top_hat":
            yb = self.point(90, 0.92)[1]
            crown = [
                (self.cx - 0.62 * hw, yb),
                (self.cx - 0.56 * hw, yb - 0.95 * hh),
                (self.cx + 0.56 * hw, yb - 0.95 * hh),
                (self.cx + 0.62 * hw, yb),
            ]
            self.shape(crown, colour)
            self.d.rectangle(
                (self.cx - 0.6 * hw, yb - 0.24 * hh, self.cx + 0.6 * hw, yb - 0.1 * hh),
                fill=_rgba(band),
            )
            self.ellipse((self.cx, yb), 1.15 * hw, 0.1 * hh, colour)
        elif kind == "beanie":
            dome = self.arc(26, 154, 21, 1.16)
            self.shape(dome, colour)
            a, b = self.point(26, 1.2), self.point(154, 1.2)
            y = max(a[1], b[1])
            self.d.rounded_rectangle(
                (b[0], y - 0.18 * hh, a[0], y + 0.02 * hh),
                radius=0.06 * hh,
                fill=_rgba(band),
                outline=self.ink,
                width=self.lw,
            )
            self.ellipse(self.point(90, 1.2), 0.15 * hh, 0.15 * hh, band)
        else:  # bow
            c = self.point(58, 1.08)
            s = 0.36 * hh
            for side in (-1, 1):
                self.shape(
                    [c, (c[0] + side * s, c[1] - 0.7 * s), (c[0] + side * s, c[1] + 0.7 * s)],
                    colour,
                )
            self.ellipse(c, 0.22 * s, 0.22 * s, _darker(colour, 0.2))


# --------------------------------------------------------------------------------------------
# Backgrounds, occluders, colour


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random scene background (RGB) of ``w`` x ``h`` pixels, its texture contrast reduced to
    :data:`BACKGROUND_CONTRAST` around its mean colour (as in tight face crops, the face, not the
    scene, carries the strongest texture)."""
    pattern = _background_pattern(rng, w, h)
    mean = np.asarray(pattern, dtype=np.float32).mean(axis=(0, 1))
    paper = mean + (np.float32(PAPER_TONE) - mean) * np.float32(BACKGROUND_PAPER_MIX)
    tone = tuple(int(round(c)) for c in paper)
    return Image.blend(Image.new("RGB", (w, h), tone), pattern, BACKGROUND_CONTRAST)


def _background_pattern(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A random scene pattern (RGB) of ``w`` x ``h`` pixels at full contrast."""
    kind = _pick(
        rng,
        ("flat", "gradient", "stripes", "halftone", "speed", "clutter"),
        (0.14, 0.2, 0.16, 0.16, 0.12, 0.22),
    )
    c1 = _random_colour(rng)
    c2 = _random_colour(rng)
    if kind == "flat":
        return Image.new("RGB", (w, h), c1)
    if kind == "clutter":
        im = Image.new("RGB", (w, h), c1)
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 13))):
            col = _random_colour(rng)
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


def _occluder(
    rng: np.random.Generator, w: int, centre: Point, hh: float, ink: RGB, lw: int, skin: RGB
) -> Image.Image:
    """An RGBA layer with one occluder (block, speech balloon or hand) over part of the face."""
    layer = Image.new("RGBA", (w, w), _rgba(ink, 0))
    d = ImageDraw.Draw(layer)
    kind = _pick(rng, ("block", "balloon", "hand"))
    ang = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.55, 0.95) * hh
    cx, cy = centre[0] + dist * math.cos(ang), centre[1] + dist * math.sin(ang)
    if kind == "block":
        rx, ry = rng.uniform(0.35, 0.7) * hh, rng.uniform(0.35, 0.7) * hh
        d.rectangle(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            fill=_rgba(_random_colour(rng)),
            outline=_rgba(ink),
            width=lw,
        )
    elif kind == "balloon":
        rx, ry = rng.uniform(0.6, 0.9) * hh, rng.uniform(0.4, 0.6) * hh
        tail = [
            (cx - 0.2 * rx, cy + 0.6 * ry),
            (cx + 0.2 * rx, cy + 0.6 * ry),
            (cx + rng.uniform(-0.6, 0.6) * rx, cy + 1.5 * ry),
        ]
        d.polygon(tail, fill=(255, 255, 255, 255), outline=_rgba(ink), width=lw)
        d.ellipse(
            (cx - rx, cy - ry, cx + rx, cy + ry),
            fill=(255, 255, 255, 255),
            outline=_rgba(ink),
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
                fill=_rgba(ink),
                width=int(0.42 * r) + 2 * lw,
            )
            d.line((fx0, fy0, fx0 + dx * fl, fy0 + dy * fl), fill=_rgba(skin), width=int(0.42 * r))
        d.ellipse((px - r, py - r, px + r, py + r), fill=_rgba(skin), outline=_rgba(ink), width=lw)
    return layer


def _colour_jitter(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Rendering


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
    look = _sample_look(traits, rng) if nuisance else _neutral_look(traits)
    layer = Image.new("RGBA", (w, w), _rgba(look.ink, 0))
    painter = _Painter(layer, traits, look)
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
        occ = _occluder(rng, w, (fx, fy), scale * painter.hh, look.ink, look.lw, look.skin)
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
            arr[..., :3] = _colour_jitter(arr[..., :3], rng)
            small = Image.fromarray(arr, "RGBA")
        return small
    if nuisance:
        bg = _background(rng, w, w).convert("RGBA")
    else:
        bg = Image.new("RGBA", (w, w), (236, 236, 232, 255))
    scene = (
        Image.alpha_composite(bg, face)
        .convert("RGB")
        .resize((size, size), Image.Resampling.LANCZOS)
    )
    if nuisance:
        scene = Image.fromarray(_colour_jitter(np.asarray(scene), rng), "RGB")
    return scene


def _render_scene(
    traits: FaceTraits, rng: np.random.Generator, size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A test image: a larger random scene with the face pasted at a random place, and its box."""
    side = round(size * rng.uniform(1.25, 1.8))
    h = round(side * rng.uniform(0.85, 1.15))
    h = max(h, size + 1)
    w = max(side, size + 1)
    bg = _background(rng, w * SUPERSAMPLE, h * SUPERSAMPLE).resize((w, h), Image.Resampling.LANCZOS)
    face = render_face(traits, rng, size, nuisance=True, background=False)
    x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    canvas = bg.convert("RGBA")
    canvas.alpha_composite(face, (x, y))
    out = Image.fromarray(_colour_jitter(np.asarray(canvas.convert("RGB")), rng), "RGB")
    return out, (x, y, x + size, y + size)


# --------------------------------------------------------------------------------------------
# Writing the data set


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed, *words])


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear the subtrees a previous ``write_toy_faces`` left there."""
    ours = [
        out / "personai_icartoonface_rectrain",
        out / "personai_icartoonface_rectest",
        out / "split",
    ]
    if any(p.exists() for p in ours):
        if not (out / SUMMARY_NAME).is_file():
            raise UserError(
                f"{out} already holds iCartoonFace/split folders not written by `toy faces` "
                f"(no {SUMMARY_NAME}); choose an empty --out"
            )
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


def write_toy_faces(
    out: str | Path,
    identities: int = 50,
    per_identity: int = 40,
    size: int = 64,
    seed: int = 0,
    *,
    test_identities: int | None = None,
    distractors: int | None = None,
    split_test_fraction: float = 0.25,
    split_val_fraction: float = 0.25,
) -> dict:
    """Write the embedded face data set under ``out``; return its summary.

    Layout (the real iCartoonFace recognition layout plus a split of the training identities)::

        personai_icartoonface_rectrain/icartoonface_rectrain/id_0000/id_0000_000.jpg ...
        personai_icartoonface_rectest/icartoonface_rectest/rectest_00000.jpg ...
        personai_icartoonface_rectest/icartoonface_rectest_info.txt
        split/train/id_0000/*.jpg, split/val/id_0000/*.jpg, split/test/id_0000/*.jpg
        toy_faces.json                                 (same identities, disjoint images)

    ``per_identity`` is the number of images of each training identity (all of them are in
    ``rectrain``); ``split`` partitions exactly those images: ``round(split_test_fraction *
    per_identity)`` to ``test``, ``round(split_val_fraction * per_identity)`` to ``val`` (each at
    least 1), the rest (at least 1) to ``train``. The test images do not depend on
    ``split_val_fraction``: val is taken from what used to be train.

    Test identities (default ``max(5, identities // 5)``, 2-4 images each, labels
    ``identities ...``) and distractors (default ``max(20, identities)``, one image each of yet
    other identities, label -1) never appear in training. Each test image is a larger scene with
    the face at a random place; its box is in the info file. Same seed => byte-identical files.

    Returns the ``toy_faces.json`` content (``seed``, ``size``, ``args``, ``counts``, ``paths``
    relative to ``out``) with ``paths`` made absolute, plus ``root`` and the ``counts`` repeated at
    the top level.
    """
    if test_identities is None:
        test_identities = max(5, identities // 5)
    if distractors is None:
        distractors = max(20, identities)
    for name, value, low in (
        ("identities", identities, 1),
        ("per_identity", per_identity, 3),
        ("size", size, 16),
        ("seed", seed, 0),
        ("test_identities", test_identities, 0),
        ("distractors", distractors, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"toy faces: {name} must be an integer >= {low}, got {value!r}")
    if not 0.0 < split_test_fraction < 1.0:
        raise UserError(
            f"toy faces: split_test_fraction must be in (0, 1), got {split_test_fraction}"
        )
    if not 0.0 < split_val_fraction < 1.0 or split_test_fraction + split_val_fraction >= 1.0:
        raise UserError(
            f"toy faces: split_val_fraction must be in (0, 1) and leave room for train "
            f"(val {split_val_fraction} + test {split_test_fraction} < 1)"
        )

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"toy faces: --out {out} exists and is not a directory")
    _prepare_out(out)
    n_ids = identities + test_identities + distractors
    pad = max(4, len(str(n_ids - 1)))
    kpad = max(3, len(str(per_identity - 1)))
    n_test_each = min(per_identity - 2, max(1, round(split_test_fraction * per_identity)))
    n_val_each = min(per_identity - n_test_each - 1,
                     max(1, round(split_val_fraction * per_identity)))

    train_root, split_train, split_test = out / TRAIN_SUBDIR, out / SPLIT_TRAIN, out / SPLIT_TEST
    split_val = out / SPLIT_VAL
    for i in range(identities):
        ident = f"id_{i:0{pad}d}"
        traits = sample_traits(_rng(seed, _STREAM_TRAITS, i))
        perm = _rng(seed, _STREAM_SPLIT, i).permutation(per_identity).tolist()
        test_ks = set(perm[:n_test_each])
        val_ks = set(perm[n_test_each:n_test_each + n_val_each])
        for sub in (train_root / ident, split_train / ident, split_val / ident, split_test / ident):
            sub.mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            data = _jpeg_bytes(render_face(traits, _rng(seed, _STREAM_IMAGE, i, k), size))
            fname = f"{ident}_{k:0{kpad}d}.jpg"
            (train_root / ident / fname).write_bytes(data)
            part = split_test if k in test_ks else split_val if k in val_ks else split_train
            (part / ident / fname).write_bytes(data)

    # Test set: fresh identities (label = identity number) and distractors (label -1).
    items: list[tuple[int, int, int]] = []  # (identity number, image index, label)
    for j in range(test_identities):
        ident_no = identities + j
        n = int(_rng(seed, _STREAM_TEST, ident_no).integers(2, 5))
        items += [(ident_no, k, ident_no) for k in range(n)]
    for j in range(distractors):
        items.append((identities + test_identities + j, 0, -1))
    order = _rng(seed, _STREAM_ORDER).permutation(len(items)).tolist()
    test_root = out / TEST_SUBDIR
    test_root.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    names: dict[tuple[int, int], str] = {}
    for pos, idx in enumerate(order):
        ident_no, k, label = items[idx]
        traits = sample_traits(_rng(seed, _STREAM_TRAITS, ident_no))
        img, box = _render_scene(traits, _rng(seed, _STREAM_IMAGE, ident_no, k), size)
        name = f"rectest_{pos:05d}.jpg"
        (test_root / name).write_bytes(_jpeg_bytes(img))
        names[(ident_no, k)] = name
        rows.append(f"{name} {box[0]} {box[1]} {box[2]} {box[3]} {label}")
    pairs: list[str] = []
    for j in range(test_identities):
        ident_no = identities + j
        ks = sorted(k for (i2, k) in names if i2 == ident_no)
        pairs += [f"{names[(ident_no, ks[0])]} {names[(ident_no, k)]}" for k in ks[1:]]
    lines = rows + pairs
    (out / TEST_INFO).write_text("".join(line + "\n" for line in lines))

    summary = {
        "dataset": "toy_faces",
        "version": TOY_FACES_VERSION,
        "generator": "backbone_ssl.data.toy.write_toy_faces",
        "seed": int(seed),
        "size": int(size),
        "args": {
            "identities": int(identities),
            "per_identity": int(per_identity),
            "size": int(size),
            "seed": int(seed),
            "test_identities": int(test_identities),
            "distractors": int(distractors),
            "split_test_fraction": float(split_test_fraction),
            "split_val_fraction": float(split_val_fraction),
        },
        "counts": {
            "identities": int(identities),
            "train_images": identities * per_identity,
            "split_train_images": identities * (per_identity - n_test_each - n_val_each),
            "split_val_images": identities * n_val_each,
            "split_test_images": identities * n_test_each,
            "test_identities": int(test_identities),
            "test_images": len(items),
            "test_probe_images": len(items) - distractors,
            "distractors": int(distractors),
            "pairs": len(pairs),
        },
        "paths": {
            "rectrain": TRAIN_SUBDIR,
            "rectest": TEST_SUBDIR,
            "rectest_info": TEST_INFO,
            "split_train": SPLIT_TRAIN,
            "split_val": SPLIT_VAL,
            "split_test": SPLIT_TEST,
        },
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    result = json.loads(json.dumps(summary))
    result.update(summary["counts"])  # flat copies, for one-line printing
    result["root"] = str(out)
    result["paths"] = {k: str(out / v) for k, v in summary["paths"].items()}
    result["paths"]["summary"] = str(out / SUMMARY_NAME)
    return result


# --------------------------------------------------------------------------------------------
# Raw-pixel baseline


def _load_pixels(root: Path, size: int) -> tuple[np.ndarray, list[str]]:
    from backbone_ssl.io import is_image_file, open_rgb

    feats, labels = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p)):
            im = open_rgb(f).resize((size, size), Image.Resampling.BILINEAR)
            feats.append(np.asarray(im, dtype=np.float32).reshape(-1) / 255.0)
            labels.append(d.name)
    if not feats:
        raise UserError(f"no images found in {root} (expected ROOT/<identity>/<image>.jpg)")
    return np.stack(feats), labels


def raw_pixel_nn1(root_train: str | Path, root_test: str | Path, size: int = 32) -> float:
    """1-nearest-neighbour accuracy from ``root_train`` to ``root_test`` on raw pixels.

    Images are resized to ``size`` x ``size``, flattened, centred by the training mean and
    compared by cosine similarity; a test image scores when its nearest training image is in the
    folder of the same name. A baseline: features worth having beat it by a wide margin.
    """
    x_tr, y_tr = _load_pixels(Path(root_train), size)
    x_te, y_te = _load_pixels(Path(root_test), size)
    mean = x_tr.mean(axis=0, keepdims=True)
    a = x_tr - mean
    b = x_te - mean
    a /= np.linalg.norm(a, axis=1, keepdims=True) + 1e-8
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-8
    nearest = (b @ a.T).argmax(axis=1)
    hits = sum(y_tr[j] == y for j, y in zip(nearest.tolist(), y_te))
    return float(hits / len(y_te))
