"""The ``golden prepare`` output format: file names, the arguments and per-book job, the
numeric panel and book order, and reading an output folder back (``prepare.json``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from backbone_ssl.errors import UserError
from backbone_ssl.io import atomic_path, require_dir

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


def panel_key(name: str) -> tuple[int, int]:
    """``"12_3.jpg"`` -> ``(12, 3)`` (numeric order: page, then panel)."""
    m = PANEL_NAME.match(name)
    if m is None:
        raise ValueError(f"not a <page>_<panel>.jpg name: {name}")
    return int(m.group(1)), int(m.group(2))


def book_key(book: str) -> tuple[int, int, str]:
    """Numeric book names first, in numeric order; others after, alphabetically."""
    return (0, int(book), "") if book.isdigit() else (1, 0, book)


def write_json_compact(path: Path, obj: Any) -> None:
    """Write ``obj`` as one-line JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n")


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
