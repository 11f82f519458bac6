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

This module drives the run; the pieces: :mod:`~backbone_ssl.data.golden_format` (file names,
arguments, ordering, reading an output back), :mod:`~backbone_ssl.data.golden_inputs` (books,
detection lines, ``no_person_frames.txt``), :mod:`~backbone_ssl.data.golden_faces` (kept faces
and their areas), :mod:`~backbone_ssl.data.golden_book` (one book), and
:mod:`~backbone_ssl.data.golden_datasets` (torch datasets over an output).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from backbone_ssl.data.faces_by_character import find_ground_truth, write_faces_by_character
from backbone_ssl.data.golden_book import process_book
from backbone_ssl.data.golden_format import (
    BOOKS_DIR,
    FACES_DIR,
    LABELS_CSV,
    PREPARE_JSON,
    PREPARE_VERSION,
    SEQUENCES,
    SKIP_REASONS,
    STATS_JSON,
    WORK_DIR,
    BookJob,
    PrepareArgs,
)
from backbone_ssl.data.golden_inputs import (
    find_no_person_file,
    fingerprint,
    list_books,
    resolve_panels_root,
    split_no_person,
)
from backbone_ssl.errors import UserError
from backbone_ssl.io import atomic_path, require_dir, write_json_atomic

log = logging.getLogger(__name__)


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
        source = fingerprint([ann_file, panels_root / book])
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
    if find_ground_truth(panels_root) is not None:  # toy comics: file the crops by character
        stats["faces_by_character"] = write_faces_by_character(out)["counts"]
    return stats


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
