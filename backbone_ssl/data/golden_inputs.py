"""Reading the ``golden prepare`` inputs: the panels folder, the list of books,
``no_person_frames.txt`` (split per book) and one book's detection lines.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from backbone_ssl.data.golden_format import (
    NO_PERSON_FILE,
    PANEL_NAME,
    PANELS_DIR,
    BookJob,
    book_key,
)
from backbone_ssl.io import require_dir


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


def fingerprint(paths: Iterable[Path]) -> dict:
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


def read_detections(
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
