"""Drawing the parts of one toy cartoon face (head, hair, ears, eyes, brows, nose, mouth,
facial hair, glasses, hat) onto an RGBA layer.

This module is over 450 lines for a reason: it is one class, :class:`FacePainter`, whose part
methods all read the head geometry set up in its constructor; splitting the parts across
modules would only scatter one draw order.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from backbone_ssl.data.toy.traits import (
    HEAD_POWER,
    RGB,
    FaceTraits,
    Look,
    Point,
    darker,
    mix,
    rgba,
)


class FacePainter:
    """Draws one face (upright, centred) onto an RGBA layer of side ``w``."""

    def __init__(self, layer: Image.Image, traits: FaceTraits, look: Look) -> None:
        self.d = ImageDraw.Draw(layer)
        self.t = traits
        self.look = look
        w = layer.width
        self.cx, self.cy = 0.5 * w, 0.54 * w
        self.hh = 0.33 * w
        self.hw = self.hh * traits.head_aspect
        self.p_top, self.p_bot = HEAD_POWER[traits.head_shape]
        self.lw = look.lw
        self.ink = rgba(look.ink)
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
            self.d.polygon(pts, fill=rgba(fill))
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
            fill=None if fill is None else rgba(fill),
            outline=self.ink if outline else None,
            width=(width or self.lw) if outline else 0,
        )

    def stroke(self, pts: list[Point], colour: RGB | None = None, width: int | None = None) -> None:
        self.d.line(
            pts,
            fill=self.ink if colour is None else rgba(colour),
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
            self.ellipse(self.point(35, 1.08), 0.1 * hh, 0.1 * hh, darker(hair, 0.2))
        elif st == "buns":
            for a in (50, 130):
                self.ellipse(self.point(a, 1.18), 0.33 * hh, 0.33 * hh, hair)

    def ears(self) -> None:
        shape, skin, hh = self.t.ear_shape, self.look.skin, self.hh
        if shape == "none":
            return
        inner = darker(skin, 0.25)
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
                    (x, y), 0.15 * hh, 0.085 * hh, mix(skin, (240, 90, 110), 0.5), outline=False
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
                        mix(skin, (110, 55, 25), 0.55),
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
        dark = darker(self.look.skin, 0.3)
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
            self.ellipse((cx, y), 0.08 * hh, 0.07 * hh, darker(self.look.skin, 0.08))
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
                self.d.chord(box, 0, 180, fill=rgba(lips), outline=self.ink, width=self.lw)
            else:
                self.d.arc(box, 15, 165, fill=self.ink, width=self.lw)
        elif expr == "frown":
            box = (cx - half, y + 0.0 * hh, cx + half, y + 0.16 * hh)
            self.d.arc(box, 200, 340, fill=self.ink, width=self.lw)
        elif expr == "grin":
            box = (cx - half * 1.1, y - 0.12 * hh, cx + half * 1.1, y + 0.12 * hh)
            self.d.chord(box, 0, 180, fill=rgba(dark), outline=self.ink, width=self.lw)
            self.d.rectangle(
                (cx - half * 0.9, y, cx + half * 0.9, y + 0.035 * hh), fill=rgba((250, 250, 250))
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
                fill=rgba((250, 250, 250)),
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
                self.shape(lid, darker(self.look.skin, 0.12), outline=False)
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
        colour = darker(self.look.hair, 0.45) if self.t.hair_style != "bald" else self.look.ink
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
                mix(self.look.skin, (255, 255, 255), 0.6),
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
            self.stroke([self.rel(-0.45, -0.62), self.rel(-0.35, -1.02)], darker(hair, 0.35))
        elif st == "long":
            self.stroke([self.rel(0.0, -0.75), self.rel(0.0, -1.1)], darker(hair, 0.35))

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
                self.d.ellipse(box, outline=rgba(colour), width=w)
            else:
                self.d.rounded_rectangle(box, radius=0.2 * r, outline=rgba(colour), width=w)
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
        band = darker(colour, 0.45) if sum(colour) > 200 else (235, 235, 235)
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
            self.shape(brim, darker(colour, 0.2))
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
                fill=rgba(band),
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
                fill=rgba(band),
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
            self.ellipse(c, 0.22 * s, 0.22 * s, darker(colour, 0.2))
