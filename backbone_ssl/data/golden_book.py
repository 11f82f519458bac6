"""One book of ``golden prepare``: its face crops, person labels and sequences, written to
``books/<book>.json`` atomically after the crops (the book's done-marker).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image

from backbone_ssl.data.golden_faces import face_area, keep_faces, panel_area
from backbone_ssl.data.golden_format import (
    BOOK_COUNTERS,
    BOOKS_DIR,
    DECODE_ERRORS,
    FACE_JPEG_QUALITY,
    FACES_DIR,
    PANEL_NAME,
    PREPARE_VERSION,
    BookJob,
    panel_key,
    write_json_compact,
)
from backbone_ssl.data.golden_inputs import read_detections
from backbone_ssl.io import open_rgb

log = logging.getLogger(__name__)


def _decode_for_crops(im: Image.Image, path: Path, min_side: int, face_size: int) -> Image.Image:
    """Decode ``im`` as RGB for face crops of at least ``min_side`` px; a JPEG is decoded at
    1/2, 1/4 or 1/8 scale (DCT scaling, PIL ``draft``) when its smallest face area stays at
    least ``face_size`` px."""
    w, h = im.size
    k = next((k for k in (8, 4, 2) if min_side / k >= face_size), 1)
    if k > 1:
        im.draft("RGB", (-(-w // k), -(-h // k)))
    im.load()
    if im.mode == "RGB":
        return im
    if im.mode in ("L", "CMYK", "YCbCr"):
        return im.convert("RGB")
    return open_rgb(path).resize(im.size, Image.Resampling.BILINEAR)  # palette, alpha, 16-bit


def process_book(job: BookJob) -> dict[str, Any]:
    """Prepare one book: write its face crops, then ``books/<book>.json`` atomically.

    Returns the marker's ``counts``. Every input problem is counted, never raised.
    """
    out, args, book = Path(job.out), job.args, job.book
    c: Counter[str] = Counter()
    faces_dir = out / FACES_DIR / book
    if faces_dir.exists():
        shutil.rmtree(faces_dir)  # crops of an earlier, unfinished or outdated run
    panel_dir = Path(job.panel_dir)
    on_disk: set[str] = set()
    if panel_dir.is_dir():
        for entry in os.scandir(panel_dir):
            if entry.is_file():
                if PANEL_NAME.match(entry.name):
                    on_disk.add(entry.name)
                else:
                    c["unrecognised_files"] += 1
    if not on_disk:
        c["no_panels"] = 1
    dets = read_detections(job, c)
    no_person: set[str] = set()
    if Path(job.no_person_file).is_file():
        no_person = set(Path(job.no_person_file).read_text().split())

    order = sorted(on_disk | set(dets) | no_person, key=panel_key)
    widths: Counter[int] = Counter()
    heights: Counter[int] = Counter()
    aspect_sum = 0.0
    kept: dict[str, list[tuple[list[int], list[int]]]] = {}
    labels: list[list] = []
    for name in order:
        boxes = dets.get(name, [])
        needed = bool(boxes) or name in no_person
        if name not in on_disk:
            c["panels_missing"] += needed
            c["skip_missing_panel"] += len(boxes)
            continue
        path = panel_dir / name
        try:
            im = Image.open(path)  # reads the header only
        except DECODE_ERRORS as exc:
            log.debug("unreadable panel %s: %s", path, exc)
            c["panels_unreadable"] += 1
            c["skip_unreadable_panel"] += len(boxes)
            continue
        with im:
            w, h = im.size
            faces = keep_faces(boxes, w, h, args, c) if boxes else []
            areas = [face_area(box, w, h) for _, box, _ in faces]
            try:
                if faces:
                    img = _decode_for_crops(im, path, min(a[2] - a[0] for a in areas),
                                            args.face_size)
                elif name in no_person:
                    im.draft("RGB", (-(-w // 8), -(-h // 8)))  # a label needs a decodable panel
                    im.load()
            except DECODE_ERRORS as exc:
                log.debug("unreadable panel %s: %s", path, exc)
                c["panels_unreadable"] += 1
                c["skip_unreadable_panel"] += len(faces)
                continue
            c["panels"] += 1
            widths[w] += 1
            heights[h] += 1
            aspect_sum += w / h
            if faces:
                c["panels_with_face"] += 1
                c["kept"] += len(faces)
                c["clipped"] += sum(clipped for _, _, clipped in faces)
                faces_dir.mkdir(parents=True, exist_ok=True)
                stem = name.rsplit(".", 1)[0]
                sx, sy = img.width / w, img.height / h
                for k, fa in enumerate(areas):
                    crop = img.crop((round(fa[0] * sx), round(fa[1] * sy), round(fa[2] * sx),
                                     round(fa[3] * sy)))
                    crop.resize((args.face_size, args.face_size), Image.Resampling.BICUBIC).save(
                        faces_dir / f"{stem}_{k}.jpg", format="JPEG", quality=FACE_JPEG_QUALITY)
                areas = [(panel_area(fa, w, h), fa) for fa in areas]
                kept[name] = areas
                if name in no_person:
                    c["label_conflicts"] += 1
                else:
                    labels.append([f"{book}/{name}", 1])
                    c["labels_person"] += 1
            elif name in no_person:
                labels.append([f"{book}/{name}", 0])
                c["labels_no_person"] += 1

    sequences = []
    p = args.window
    for i in range(len(order) - p + 1):
        win = order[i:i + p]
        if not all(n in kept for n in win):
            continue
        frames = [f"{book}/{n}" for n in win]
        context = [list(map(list, kept[n][0])) for n in win[:-1]]
        for pa, fa in kept[win[-1]]:
            sequences.append([frames, [*context, [list(pa), list(fa)]]])
    c["sequences"] = len(sequences)
    counts = {k: int(c.get(k, 0)) for k in BOOK_COUNTERS}
    marker = {
        "version": PREPARE_VERSION, "book": book, "args": asdict(args), "source": job.source,
        "counts": counts,
        "sizes": {"w": sorted(widths.items()), "h": sorted(heights.items()),
                  "aspect_sum": aspect_sum},
        "labels": labels, "sequences": sequences,
    }
    write_json_compact(out / BOOKS_DIR / f"{book}.json", marker)
    return {"book": book, "counts": counts}
