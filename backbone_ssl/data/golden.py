"""``backbone-ssl golden prepare``: COMICS panels + face detections -> face-cloze training data.

Input (see ``DESIGN.md``): ``raw_panel_images/<book>/<page>_<panel>.jpg`` and one
``<book>.txt`` of detector lines ``book/page_panel.jpg x1 y1 x2 y2 conf`` per book, plus an
optional ``no_person_frames.txt`` (one ``book/page_panel.jpg`` a line), looked for in the
annotations folder, beside the panels folder, then inside it.

Output folder::

    sequences.json      {"0": [[f1, .., fP], [[panel_area, face_area] x P]], ...}
    faces/<book>/<page>_<panel>_<k>.jpg   one square crop per kept face (k = 0 most confident)
    person_labels.csv   panel,has_person
    stats.json          counts kept and skipped per reason, panel sizes, sequences
    prepare.json        absolute input paths + arguments (datasets find the panels through it)
    books/<book>.json   per-book results (done-markers), merged into the files above
    faces_by_character/{train,val,test}/<character>/   only for toy comics (ground_truth.json
                        beside the panels): the same crops filed by character
                        (backbone_ssl/data/faces_by_character.py)

A kept face has ``conf >= min_conf`` and ``max(w, h) >= min_face`` after clipping the box to the
panel. A window is ``window`` consecutive panels of one book (numeric ``(page, panel)`` order,
pages roll over; a panel that the annotations or ``no_person_frames.txt`` name but that is missing
on disk is a gap) whose every panel has a kept face; it gives one sequence per kept face of its
last panel; earlier panels use their most confident face. ``face_area`` is a square around the
detection inside the panel, ``panel_area`` the panel's largest square (centred, then shifted the
least needed) containing it. ``has_person`` is 1 for a panel with a kept face, 0 for one listed in
``no_person_frames.txt`` (a panel that is both is a counted conflict and gets no label).

Books are processed one at a time (``workers`` processes, one book per task) and each is written
atomically to ``books/<book>.json`` after its crops, so a crash or kill loses no finished book and
a re-run skips books whose inputs and arguments are unchanged. Memory depends on the largest book,
not on the number of books. Same inputs => byte-identical outputs, whatever ``workers``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from backbone_ssl.errors import UserError
from backbone_ssl.io import atomic_path, open_rgb, require_dir, write_json_atomic

log = logging.getLogger(__name__)

PREPARE_VERSION = 1
PANELS_DIR = "raw_panel_images"
NO_PERSON_FILE = "no_person_frames.txt"
SEQUENCES = "sequences.json"
FACES_DIR = "faces"
LABELS_CSV = "person_labels.csv"
STATS_JSON = "stats.json"
PREPARE_JSON = "prepare.json"
BOOKS_DIR = "books"
WORK_DIR = ".work"
FACE_JPEG_QUALITY = 95

PANEL_NAME = re.compile(r"^(\d+)_(\d+)\.jpe?g$", re.IGNORECASE)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

#: Reasons a detection line is not kept; every line lands in exactly one of these or in ``kept``.
SKIP_REASONS = (
    "bad_field_count",  # not 6 whitespace-separated fields
    "not_numeric",  # a coordinate or the confidence is not a finite number
    "bad_panel_name",  # path is not <this book>/<page>_<panel>.jpg
    "duplicate",  # the same panel, box and confidence again
    "reversed",  # x2 <= x1 or y2 <= y1
    "missing_panel",  # the panel file does not exist
    "unreadable_panel",  # the panel file cannot be decoded (corrupt, truncated)
    "outside_panel",  # the box lies wholly outside the panel
    "low_conf",  # conf < min_conf
    "small_face",  # max(w, h) < min_face after clipping
)
#: Per-book counters written to ``books/<book>.json`` and summed into ``stats.json``.
BOOK_COUNTERS = (
    "lines", "kept", "clipped", *(f"skip_{r}" for r in SKIP_REASONS),
    "panels", "panels_with_face", "panels_missing", "panels_unreadable", "unrecognised_files",
    "labels_person", "labels_no_person", "label_conflicts", "sequences",
    "empty_book", "no_annotations", "no_panels",
)


@dataclass(frozen=True)
class PrepareArgs:
    """The arguments that change a book's result (recorded in every done-marker)."""

    min_conf: float = 0.9
    min_face: int = 32
    window: int = 3
    face_size: int = 64


@dataclass(frozen=True)
class BookJob:
    """Everything a worker needs to prepare one book."""

    book: str
    panel_dir: str
    annotation_file: str
    no_person_file: str  # this book's no-person lines (work file), may not exist
    out: str
    args: PrepareArgs
    source: dict  # fingerprint of the inputs, compared on re-runs


# ---------------------------------------------------------------------------------------------
# Geometry


def face_area(box: tuple[float, float, float, float], w: int, h: int) -> list[int]:
    """Square ``[x1, y1, x2, y2]`` around ``box`` (already inside the ``w`` x ``h`` panel).

    Side ``max(box w, box h)`` rounded up, at most ``min(w, h)``; centred on the box, then shifted
    to lie inside the panel.
    """
    x1, y1, x2, y2 = box
    side = max(1, min(math.ceil(max(x2 - x1, y2 - y1) - 1e-6), w, h))
    fx = min(max(round((x1 + x2 - side) / 2), 0), w - side)
    fy = min(max(round((y1 + y2 - side) / 2), 0), h - side)
    return [fx, fy, fx + side, fy + side]


def panel_area(face: list[int], w: int, h: int) -> list[int]:
    """The panel's largest square (side ``min(w, h)``) containing ``face``: centred in the panel,
    then shifted the least needed."""
    s = min(w, h)
    px = min(max((w - s) // 2, face[2] - s, 0), face[0], w - s)
    py = min(max((h - s) // 2, face[3] - s, 0), face[1], h - s)
    return [px, py, px + s, py + s]


def _clip(box: tuple[float, ...], w: int, h: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


# ---------------------------------------------------------------------------------------------
# Inputs


def panel_key(name: str) -> tuple[int, int]:
    """``"12_3.jpg"`` -> ``(12, 3)`` (numeric order: page, then panel)."""
    m = PANEL_NAME.match(name)
    if m is None:
        raise ValueError(f"not a <page>_<panel>.jpg name: {name}")
    return int(m.group(1)), int(m.group(2))


def book_key(book: str) -> tuple[int, int, str]:
    """Numeric book names first, in numeric order; others after, alphabetically."""
    return (0, int(book), "") if book.isdigit() else (1, 0, book)


def resolve_panels_root(panels: str | os.PathLike) -> Path:
    """``--panels``: the ``raw_panel_images`` folder, or a folder holding it."""
    root = require_dir(panels, "panels folder")
    inner = root / PANELS_DIR
    return inner if inner.is_dir() else root


def find_no_person_file(panels_root: Path, ann_root: Path) -> Path | None:
    """``no_person_frames.txt`` in the annotations folder, beside the panels folder, or in it."""
    for cand in (ann_root / NO_PERSON_FILE, panels_root.parent / NO_PERSON_FILE,
                 panels_root / NO_PERSON_FILE):
        if cand.is_file():
            return cand
    return None


def list_books(panels_root: Path, ann_root: Path) -> list[str]:
    """Books named by a panel sub-folder or an annotation ``<book>.txt``, in book order."""
    books = {p.name for p in panels_root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    books |= {p.stem for p in ann_root.glob("*.txt") if p.name != NO_PERSON_FILE}
    return sorted(books, key=book_key)


def split_no_person(path: Path | None, books: set[str], work: Path) -> dict[str, int]:
    """Stream ``no_person_frames.txt`` into ``work/<book>.txt`` files (bounded memory).

    Returns counts: ``lines``, ``bad_lines`` (not ``book/page_panel.jpg``), ``unknown_book``.
    """
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    counts = Counter(lines=0, bad_lines=0, unknown_book=0)
    if path is None:
        return dict(counts)
    buffer: dict[str, list[str]] = {}
    buffered = 0

    def flush() -> None:
        for book, names in buffer.items():
            with open(work / f"{book}.txt", "a") as f:
                f.write("".join(n + "\n" for n in names))
        buffer.clear()

    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            counts["lines"] += 1
            book, _, name = line.rpartition("/")
            if not book or not PANEL_NAME.match(name):
                counts["bad_lines"] += 1
                continue
            book = book.rsplit("/", 1)[-1]
            if book not in books:
                counts["unknown_book"] += 1
                continue
            buffer.setdefault(book, []).append(name)
            buffered += 1
            if buffered >= 100_000:
                flush()
                buffered = 0
    flush()
    return dict(counts)


def _fingerprint(paths: Iterable[Path]) -> dict:
    """Path, size and mtime of a book's inputs (a re-run redoes a book when they change; a
    panel folder's mtime changes when panels are added, removed or renamed)."""
    out = {}
    for p in paths:
        try:
            st = p.stat()
            out[str(p)] = [st.st_size if p.is_file() else 0, st.st_mtime_ns]
        except OSError:
            out[str(p)] = None
    return out


def _read_detections(
    job: BookJob, c: Counter
) -> dict[str, list[tuple[float, float, float, float, float]]]:
    """Parse the book's detection lines: ``panel name -> [(x1, y1, x2, y2, conf)]``; bad lines
    are counted in ``c`` under ``skip_<reason>``."""
    boxes: dict[str, list[tuple[float, float, float, float, float]]] = {}
    path = Path(job.annotation_file)
    if not path.is_file():
        c["no_annotations"] = 1
        return boxes
    seen: set[tuple] = set()
    with open(path, errors="replace") as f:
        for raw in f:
            fields = raw.split()
            if not fields:
                continue
            c["lines"] += 1
            if len(fields) != 6:
                c["skip_bad_field_count"] += 1
                continue
            try:
                nums = tuple(float(v) for v in fields[1:])
            except ValueError:
                nums = (math.nan,)
            if not all(math.isfinite(v) for v in nums):
                c["skip_not_numeric"] += 1
                continue
            book, _, name = fields[0].rpartition("/")
            if book.rsplit("/", 1)[-1] not in ("", job.book) or not PANEL_NAME.match(name):
                c["skip_bad_panel_name"] += 1
                continue
            key = (name, *nums)
            if key in seen:
                c["skip_duplicate"] += 1
                continue
            seen.add(key)
            x1, y1, x2, y2, _ = nums
            if x2 <= x1 or y2 <= y1:
                c["skip_reversed"] += 1
                continue
            boxes.setdefault(name, []).append(nums)  # type: ignore[arg-type]
    if c["lines"] == 0:
        c["empty_book"] = 1
    return boxes


# ---------------------------------------------------------------------------------------------
# One book


def _keep_faces(
    dets: list[tuple[float, ...]], w: int, h: int, args: PrepareArgs, c: Counter
) -> list[tuple[float, tuple[float, float, float, float], bool]]:
    """Filter a panel's detections (skips counted in ``c``); returns ``[(conf, box clipped to
    the panel, whether it was clipped)]``, most confident first."""
    kept = []
    for x1, y1, x2, y2, conf in dets:
        box = _clip((x1, y1, x2, y2), w, h)
        if box[2] <= box[0] or box[3] <= box[1]:
            c["skip_outside_panel"] += 1
            continue
        clipped = box != (x1, y1, x2, y2)
        if conf < args.min_conf:
            c["skip_low_conf"] += 1
        elif max(box[2] - box[0], box[3] - box[1]) < args.min_face:
            c["skip_small_face"] += 1
        else:
            kept.append((conf, box, clipped))
    kept.sort(key=lambda t: (-t[0], t[1]))
    return kept


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
    dets = _read_detections(job, c)
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
            faces = _keep_faces(boxes, w, h, args, c) if boxes else []
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


def write_json_compact(path: Path, obj: Any) -> None:
    """Write ``obj`` as one-line JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


# ---------------------------------------------------------------------------------------------
# Driver


def _check_args(args: PrepareArgs, workers: int) -> None:
    if not 0.0 <= args.min_conf <= 1.0:
        raise UserError(f"--min-conf must be in [0, 1], got {args.min_conf}")
    for name, value, low in (("min-face", args.min_face, 1), ("window", args.window, 1),
                             ("face-size", args.face_size, 8), ("workers", workers, 1)):
        if value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")


def _is_done(marker: Path, job: BookJob) -> bool:
    """True when ``marker`` was written by this version for the same args and inputs."""
    try:
        m = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return (m.get("version") == PREPARE_VERSION and m.get("args") == asdict(job.args)
            and m.get("source") == job.source
            and (Path(job.out) / FACES_DIR / job.book).is_dir() == (m["counts"]["kept"] > 0))


def _remove_stale_books(out: Path, books: set[str]) -> None:
    """Drop markers and crops of books that are no longer in the input."""
    for marker in sorted((out / BOOKS_DIR).glob("*.json")):
        if marker.stem not in books:
            log.info("removing output of book %s (no longer in the input)", marker.stem)
            marker.unlink()
            shutil.rmtree(out / FACES_DIR / marker.stem, ignore_errors=True)


def _run(jobs: list[BookJob], workers: int) -> Iterator[dict]:
    if workers == 1 or len(jobs) <= 1:
        yield from map(process_book, jobs)
        return
    with multiprocessing.get_context().Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap(process_book, jobs, chunksize=1)


def _median_from_hist(hist: Counter) -> float:
    n = sum(hist.values())
    if n == 0:
        return 0.0
    lo, hi = (n - 1) // 2, n // 2
    vals, seen = [], 0
    for v in sorted(hist):
        prev, seen = seen, seen + hist[v]
        for target in (lo, hi):
            if prev <= target < seen:
                vals.append(v)
    return float(statistics.mean(vals))


def _merge(out: Path, books: list[str]) -> dict[str, Any]:
    """Stream the per-book markers into sequences.json and person_labels.csv; sum the counts."""
    totals: Counter[str] = Counter()
    widths: Counter[int] = Counter()
    heights: Counter[int] = Counter()
    aspect_sum = 0.0
    n_seq = 0
    with (atomic_path(out / SEQUENCES) as seq_tmp, atomic_path(out / LABELS_CSV) as lab_tmp,
          open(seq_tmp, "w") as seq_f, open(lab_tmp, "w") as lab_f):
        seq_f.write("{")
        lab_f.write("panel,has_person\n")
        for book in books:
            m = json.loads((out / BOOKS_DIR / f"{book}.json").read_text())
            totals.update(m["counts"])
            widths.update({int(k): v for k, v in m["sizes"]["w"]})
            heights.update({int(k): v for k, v in m["sizes"]["h"]})
            aspect_sum += m["sizes"]["aspect_sum"]
            for entry in m["sequences"]:
                seq_f.write(("," if n_seq else "") + f"\n{json.dumps(str(n_seq))}: "
                            + json.dumps(entry, separators=(",", ":")))
                n_seq += 1
            lab_f.write("".join(f"{p},{y}\n" for p, y in m["labels"]))
        seq_f.write("\n}\n")
    n_panels = totals["panels"]
    mean_w = sum(k * v for k, v in widths.items()) / n_panels if n_panels else 0.0
    mean_h = sum(k * v for k, v in heights.items()) / n_panels if n_panels else 0.0
    return {
        "panels": {
            "decoded_or_sized": n_panels, "with_kept_face": totals["panels_with_face"],
            "missing": totals["panels_missing"], "unreadable": totals["panels_unreadable"],
            "unrecognised_files": totals["unrecognised_files"],
            "size_mean": [round(mean_w, 2), round(mean_h, 2)],
            "size_median": [_median_from_hist(widths), _median_from_hist(heights)],
            "aspect_mean": round(aspect_sum / n_panels, 4) if n_panels else 0.0,
        },
        "boxes": {
            "lines": totals["lines"], "kept": totals["kept"], "clipped": totals["clipped"],
            "skipped": {r: totals[f"skip_{r}"] for r in SKIP_REASONS},
        },
        "labels": {"person": totals["labels_person"], "no_person": totals["labels_no_person"],
                   "conflicts": totals["label_conflicts"]},
        "faces": totals["kept"],
        "sequences": n_seq,
        "books_empty": totals["empty_book"],
        "books_without_annotations": totals["no_annotations"],
        "books_without_panels": totals["no_panels"],
    }


def prepare(
    panels: str | os.PathLike,
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    *,
    min_conf: float = 0.9,
    min_face: int = 32,
    window: int = 3,
    face_size: int = 64,
    workers: int = 1,
) -> dict[str, Any]:
    """Prepare a COMICS panel set (see the module docstring); returns the stats (``stats.json``).

    Raises UserError when an input folder is missing or when no face box is kept (stats.json is
    still written then).
    """
    args = PrepareArgs(float(min_conf), int(min_face), int(window), int(face_size))
    _check_args(args, workers)
    panels_root = resolve_panels_root(panels).resolve()
    ann_root = require_dir(annotations, "annotations folder").resolve()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    books = list_books(panels_root, ann_root)
    if not books:
        raise UserError(f"no books in {panels_root} (expected <book>/<page>_<panel>.jpg) "
                        f"nor in {ann_root} (expected <book>.txt)")
    no_person_path = find_no_person_file(panels_root, ann_root)
    work = out / WORK_DIR / "no_person"
    no_person_counts = split_no_person(no_person_path, set(books), work)
    (out / BOOKS_DIR).mkdir(exist_ok=True)
    _remove_stale_books(out, set(books))
    record = {
        "version": PREPARE_VERSION,
        "panels": str(panels_root),
        "annotations": str(ann_root),
        "no_person_frames": str(no_person_path.resolve()) if no_person_path else None,
        "args": asdict(args),
    }
    write_json_atomic(out / PREPARE_JSON, record)

    jobs, resumed = [], 0
    for book in books:
        np_file = work / f"{book}.txt"
        ann_file = ann_root / f"{book}.txt"
        source = _fingerprint([ann_file, panels_root / book])
        if np_file.is_file():
            source["no_person_sha1"] = hashlib.sha1(np_file.read_bytes()).hexdigest()
        job = BookJob(book, str(panels_root / book), str(ann_file), str(np_file), str(out),
                      args, source)
        if _is_done(out / BOOKS_DIR / f"{book}.json", job):
            resumed += 1
        else:
            jobs.append(job)
    log.info("golden prepare: %d books (%d already done), %d workers", len(books), resumed,
             workers)
    for i, res in enumerate(_run(jobs, workers), 1):
        if i % 100 == 0 or i == len(jobs):
            log.info("prepared %d/%d books (last: %s)", i, len(jobs), res["book"])
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)

    stats = {"books": {"total": len(books), "processed": len(jobs), "resumed": resumed},
             **_merge(out, books), "no_person_frames": no_person_counts,
             "args": {**asdict(args), "workers": workers}}
    stats["books"].update(empty=stats.pop("books_empty"),
                          without_annotations=stats.pop("books_without_annotations"),
                          without_panels=stats.pop("books_without_panels"))
    write_json_atomic(out / STATS_JSON, stats)
    if stats["boxes"]["kept"] == 0:
        raise UserError(
            f"golden prepare: nothing usable: 0 of {stats['boxes']['lines']} face boxes kept "
            f"({_skipped_text(stats)}) in {ann_root} for panels {panels_root}; check the paths, "
            f"--min-conf {args.min_conf} and --min-face {args.min_face}"
        )
    from backbone_ssl.data.faces_by_character import find_ground_truth, write_faces_by_character

    if find_ground_truth(panels_root) is not None:  # toy comics: file the crops by character
        stats["faces_by_character"] = write_faces_by_character(out)["counts"]
    return stats


def read_prepare_record(prep_out: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """``(prepare.json content, raw panels folder)`` of a ``golden prepare`` output folder."""
    root = require_dir(prep_out, "golden prepare output")
    path = root / PREPARE_JSON
    if not path.is_file():
        raise UserError(f"{root} is not a `golden prepare` output (no {PREPARE_JSON}); run "
                        "`backbone-ssl golden prepare --panels DIR --annotations DIR --out DIR`")
    try:
        record = json.loads(path.read_text())
        panels = Path(record["panels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not panels.is_dir():
        raise UserError(f"raw panels folder recorded in {path} not found: {panels} "
                        "(moved? re-run `golden prepare` with the new --panels)")
    return record, panels


def _skipped_text(stats: dict[str, Any]) -> str:
    skipped = {k: v for k, v in stats["boxes"]["skipped"].items() if v}
    return "skipped " + (", ".join(f"{k}={v}" for k, v in skipped.items()) or "none")


def summary_line(stats: dict[str, Any]) -> str:
    """One line for the command line: what was kept, what was skipped and why."""
    b, p, x, lab = stats["books"], stats["panels"], stats["boxes"], stats["labels"]
    problems = {"missing": p["missing"], "unreadable": p["unreadable"], "empty books": b["empty"]}
    bad = ", ".join(f"{k}={v}" for k, v in problems.items() if v) or "none"
    return (
        f"golden prepare: {b['total']} books ({b['resumed']} already done), "
        f"{p['decoded_or_sized']} panels, {x['kept']}/{x['lines']} face boxes kept "
        f"({_skipped_text(stats)}), {stats['sequences']} sequences, "
        f"{lab['person']} person / {lab['no_person']} no-person labels; bad panels: {bad}"
    )
