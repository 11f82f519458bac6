"""Procedurally drawn comic books in the COMICS layout (``backbone-ssl toy comics``).

Each book has a recurring cast (3-5 characters drawn with the toy face generator,
:func:`backbone_ssl.data.toy.render_face`, each with a shirt colour). A scene keeps the same
characters on stage for several consecutive panels, so a face carries across panels (and across
page breaks); some panels show nobody. Panels have varied sizes (120-320 px a side) and aspect
ratios, a patterned background, bodies under the faces, speech balloons and a border.

Face boxes imitate a cartoon face detector's output, with its noise: confidences spread from 0.5
to 1.0, faces under 32 px, boxes touching or crossing the panel edge (faces cut by the border),
a few missed faces and a few false positives on the background. ``ground_truth.json`` holds the
identity of every box (``-1`` for false positives) and is read only by evaluation.

Layout under ``out/`` (see ``DESIGN.md``)::

    raw_panel_images/<book>/<page>_<panel>.jpg
    face_annotations/<book>.txt          book/page_panel.jpg x1 y1 x2 y2 conf
    no_person_frames.txt                 book/page_panel.jpg   (panels with nobody drawn)
    ground_truth.json                    {"boxes": {panel: [[x1,y1,x2,y2,conf,identity], ...]}}
    toy_comics.json                      summary

All randomness comes from ``numpy.random.Generator`` streams keyed by ``(seed, stream, book,
...)``; JPEGs are written without metadata, so the same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from backbone_ssl.data.toy.backgrounds import colour_jitter, scene_background
from backbone_ssl.data.toy.render import render_face
from backbone_ssl.data.toy.traits import FaceTraits, random_colour, sample_traits
from backbone_ssl.data.toy.writer import jpeg_bytes
from backbone_ssl.errors import UserError

PANELS_DIR = "raw_panel_images"
ANNOTATIONS_DIR = "face_annotations"
NO_PERSON_FILE = "no_person_frames.txt"
GROUND_TRUTH = "ground_truth.json"
SUMMARY_NAME = "toy_comics.json"
TOY_COMICS_VERSION = 1
#: Identity number of a character: ``book * MAX_CAST + k``; ``-1`` marks a false positive.
MAX_CAST = 10

PANEL_SIDE = (120, 320)
PANELS_PER_PAGE = (4, 8)
FACE_SIDE = (22, 120)  # drawn face square (the head's box is about 0.7x this)

# Random streams (first SeedSequence word after the seed).
_STREAM_CAST, _STREAM_STORY, _STREAM_PANEL = range(3)


@dataclass(frozen=True)
class _Character:
    traits: FaceTraits
    shirt: tuple[int, int, int]
    identity: int


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed, *words])


def _cast(seed: int, book: int) -> list[_Character]:
    """The recurring characters of one book."""
    rng = _rng(seed, _STREAM_CAST, book)
    n = int(rng.integers(3, 6))
    return [
        _Character(
            traits=sample_traits(_rng(seed, _STREAM_CAST, book, k + 1)),
            shirt=random_colour(rng, sat=(0.3, 0.9), val=(0.3, 0.9)),
            identity=book * MAX_CAST + k,
        )
        for k in range(n)
    ]


def _story(rng: np.random.Generator, n_cast: int, n_panels: int) -> list[list[int]]:
    """Who is on stage in each panel: scenes of a few panels with a stable set of characters."""
    stage: list[int] = []
    out: list[list[int]] = []
    for i in range(n_panels):
        if i == 0 or rng.random() < 0.2:  # new scene
            n = int(rng.choice(4, p=(0.1, 0.4, 0.38, 0.12)))
            stage = sorted(rng.choice(n_cast, size=min(n, n_cast), replace=False).tolist())
        elif rng.random() < 0.15:  # someone enters or leaves
            if stage and rng.random() < 0.5:
                stage = [c for c in stage if c != stage[int(rng.integers(len(stage)))]]
            else:
                free = [c for c in range(n_cast) if c not in stage]
                if free and len(stage) < 3:
                    stage = sorted(stage + [free[int(rng.integers(len(free)))]])
        shown = [c for c in stage if rng.random() > 0.08]  # now and then someone is off-frame
        out.append(shown)
    return out


def _panel_size(rng: np.random.Generator) -> tuple[int, int]:
    """Width and height: wide, tall or squarish panels between 120 and 320 px a side."""
    lo, hi = PANEL_SIDE
    kind = int(rng.choice(3, p=(0.4, 0.3, 0.3)))
    long_side = int(rng.integers(200, hi + 1))
    if kind == 0:  # wide
        return long_side, int(np.clip(long_side / rng.uniform(1.3, 2.4), lo, hi))
    if kind == 1:  # tall
        return int(np.clip(long_side / rng.uniform(1.3, 2.0), lo, hi)), long_side
    side = int(rng.integers(lo + 40, hi + 1))
    return side, int(np.clip(side * rng.uniform(0.85, 1.15), lo, hi))


def _balloon(d: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """A speech balloon with a tail and grey 'text' lines in the top part of the panel."""
    rx, ry = rng.uniform(0.18, 0.35) * w, rng.uniform(0.08, 0.16) * h
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.06, 0.3) * h
    tail = [(cx - 0.15 * rx, cy + 0.5 * ry), (cx + 0.15 * rx, cy + 0.5 * ry),
            (cx + rng.uniform(-0.8, 0.8) * rx, cy + 1.7 * ry)]
    d.polygon(tail, fill=(255, 255, 250), outline=(20, 20, 20))
    d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(255, 255, 250), outline=(20, 20, 20),
              width=2)
    lines = int(rng.integers(1, 4))
    for k in range(lines):
        y = cy + (k - (lines - 1) / 2) * 0.45 * ry
        half = rx * 0.65 * rng.uniform(0.6, 1.0)
        d.line((cx - half, y, cx + half, y), fill=(90, 90, 90), width=max(1, int(0.12 * ry)))


def _detector_box(
    rng: np.random.Generator, head: tuple[int, int, int, int], w: int, h: int
) -> list[int]:
    """The detector's box for a drawn head: jittered; clipped to the panel in about half the
    cases where the head crosses the edge, left crossing it otherwise."""
    x1, y1, x2, y2 = head
    s = max(x2 - x1, y2 - y1)
    j = rng.uniform(-0.06, 0.06, 4) * s
    box = [round(x1 + j[0]), round(y1 + j[1]), round(x2 + j[2]), round(y2 + j[3])]
    if rng.random() < 0.5:
        box = [max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])]
    if box[2] <= box[0] or box[3] <= box[1]:
        return list(head)
    return box


def _draw_panel(
    rng: np.random.Generator, cast: list[_Character], shown: list[int]
) -> tuple[Image.Image, list[tuple[list[int], float, int]]]:
    """One panel and its detections ``(box, conf, identity)``."""
    w, h = _panel_size(rng)
    panel = scene_background(rng, w, h).convert("RGB")
    paper = np.asarray(panel, dtype=np.float32) * np.float32(0.6) + np.float32(0.4 * 235)
    panel = Image.fromarray(paper.round().clip(0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(panel)
    dets: list[tuple[list[int], float, int]] = []
    n = len(shown)
    for slot, c in enumerate(shown):
        char = cast[c]
        big = min(FACE_SIDE[1], int(0.75 * min(w, h)))
        if rng.random() < 0.12:
            side = int(rng.integers(FACE_SIDE[0], 44))  # small, often under 32 px once boxed
        else:
            side = int(rng.integers(min(48, big), big + 1))
        cx = (slot + 0.5) / n * w + rng.uniform(-0.12, 0.12) * w
        cy = rng.uniform(0.3, 0.6) * h
        if rng.random() < 0.12:  # cut by the panel border
            edge = int(rng.integers(4))
            cx = (-0.15 * side, w + 0.15 * side, cx, cx)[edge]
            cy = (cy, cy, -0.1 * side, cy)[edge]
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        # body: a shirt from under the chin to the panel bottom
        bw = 0.9 * side
        d.rounded_rectangle((cx - bw / 2, y0 + 0.85 * side, cx + bw / 2, h + 10),
                            radius=max(2, int(0.25 * side)), fill=char.shirt,
                            outline=(20, 20, 20), width=2)
        face = render_face(char.traits, rng, side, nuisance=True, background=False)
        panel.paste(face, (x0, y0), face)
        bbox = face.getchannel("A").point(lambda a: 255 if a > 128 else 0).getbbox()
        if bbox is None:
            continue
        head = (x0 + bbox[0], y0 + bbox[1], x0 + bbox[2], y0 + bbox[3])
        if head[2] <= 0 or head[3] <= 0 or head[0] >= w or head[1] >= h:
            continue
        if rng.random() < 0.05:  # missed by the detector
            continue
        conf = rng.uniform(0.9, 1.0) if rng.random() < 0.8 else rng.uniform(0.5, 0.9)
        dets.append((_detector_box(rng, head, w, h), round(float(conf), 4), char.identity))
    if rng.random() < 0.5:
        _balloon(d, rng, w, h)
    if rng.random() < 0.08:  # a false positive on the background
        s = int(rng.integers(24, max(25, min(90, w, h) - 4)))
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        dets.append(([x, y, x + s, y + s], round(float(rng.uniform(0.5, 0.97)), 4), -1))
    bw = int(rng.integers(2, 5))
    d.rectangle((0, 0, w - 1, h - 1), outline=(15, 15, 15), width=bw)
    panel = Image.fromarray(colour_jitter(np.asarray(panel), rng), "RGB")
    return panel, dets


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear what a previous ``write_toy_comics`` wrote there."""
    ours = [out / PANELS_DIR, out / ANNOTATIONS_DIR, out / NO_PERSON_FILE, out / GROUND_TRUTH]
    if out.exists() and not out.is_dir():
        raise UserError(f"toy comics: --out {out} exists and is not a directory")
    if any(p.exists() for p in ours):
        if not (out / SUMMARY_NAME).is_file():
            raise UserError(
                f"{out} already holds COMICS files not written by `toy comics` "
                f"(no {SUMMARY_NAME}); choose an empty --out"
            )
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_toy_comics(out: str | Path, books: int = 6, pages: int = 8, seed: int = 0) -> dict:
    """Write ``books`` toy comic books of ``pages`` pages (4-8 panels a page) under ``out``.

    Returns the summary (also written to ``toy_comics.json``): ``seed``, ``args``, the paths, and
    int counts at the top level: ``books``, ``pages``, ``panels``, ``faces`` (characters drawn),
    ``boxes`` (detections written), ``false_positives``, ``small_boxes`` (max side < 32),
    ``edge_boxes`` (touching or crossing the panel edge), ``no_person_panels``.
    Same seed => byte-identical files.
    """
    for name, value in (("books", books), ("pages", pages), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < (0 if name == "seed" else 1):
            raise UserError(f"toy comics: {name} must be a positive integer, got {value!r}")
    out = Path(out)
    _prepare_out(out)
    counts = {"books": int(books), "pages": int(books * pages), "panels": 0, "faces": 0, "boxes": 0,
                  "false_positives": 0, "small_boxes": 0, "edge_boxes": 0, "no_person_panels": 0}
    no_person: list[str] = []
    truth: dict[str, list[list]] = {}
    (out / ANNOTATIONS_DIR).mkdir(parents=True, exist_ok=True)
    for b in range(books):
        book = str(b)
        cast = _cast(seed, b)
        story_rng = _rng(seed, _STREAM_STORY, b)
        per_page = [int(story_rng.integers(PANELS_PER_PAGE[0], PANELS_PER_PAGE[1] + 1))
                    for _ in range(pages)]
        stages = _story(story_rng, len(cast), sum(per_page))
        book_dir = out / PANELS_DIR / book
        book_dir.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        i = 0
        for page, n_panels in enumerate(per_page):
            for k in range(n_panels):
                name = f"{page}_{k}.jpg"
                rel = f"{book}/{name}"
                img, dets = _draw_panel(_rng(seed, _STREAM_PANEL, b, page, k), cast, stages[i])
                i += 1
                (book_dir / name).write_bytes(jpeg_bytes(img))
                w, h = img.size
                counts["panels"] += 1
                counts["faces"] += len(stages[i - 1])
                if not stages[i - 1]:
                    no_person.append(rel)
                for box, conf, ident in dets:
                    lines.append(f"{rel} {box[0]} {box[1]} {box[2]} {box[3]} {conf:.4f}")
                    truth.setdefault(rel, []).append([*box, conf, ident])
                    counts["boxes"] += 1
                    counts["false_positives"] += ident < 0
                    counts["small_boxes"] += max(box[2] - box[0], box[3] - box[1]) < 32
                    counts["edge_boxes"] += (min(box[0], box[1]) <= 0 or box[2] >= w
                                             or box[3] >= h)
        (out / ANNOTATIONS_DIR / f"{book}.txt").write_text("".join(ln + "\n" for ln in lines))
    counts["no_person_panels"] = len(no_person)
    (out / NO_PERSON_FILE).write_text("".join(p + "\n" for p in no_person))
    (out / GROUND_TRUTH).write_text(json.dumps(
        {"format": "panel -> [[x1, y1, x2, y2, conf, identity]], identity -1 = false positive",
         "max_cast": MAX_CAST, "boxes": truth}) + "\n")
    summary = {
        "dataset": "toy_comics",
        "version": TOY_COMICS_VERSION,
        "generator": "backbone_ssl.data.toy_comics.write_toy_comics",
        "seed": int(seed),
        "args": {"books": int(books), "pages": int(pages), "seed": int(seed)},
        "counts": counts,
        "paths": {"panels": PANELS_DIR, "annotations": ANNOTATIONS_DIR,
                  "no_person": NO_PERSON_FILE, "ground_truth": GROUND_TRUTH},
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    result = json.loads(json.dumps(summary))
    result.update(counts)
    result["root"] = str(out)
    result["paths"] = {k: str(out / v) for k, v in summary["paths"].items()}
    return result


def mean_panels(pages: int) -> float:
    """Expected panels per book for ``pages`` pages (for sizing benchmark data sets)."""
    return pages * (PANELS_PER_PAGE[0] + PANELS_PER_PAGE[1]) / 2


__all__ = [
    "ANNOTATIONS_DIR",
    "GROUND_TRUTH",
    "MAX_CAST",
    "NO_PERSON_FILE",
    "PANELS_DIR",
    "mean_panels",
    "write_toy_comics",
]
