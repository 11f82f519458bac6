"""The evaluation report: ``run_eval`` measures an encoder (and its baselines) with
:mod:`.protocol` and writes ``OUT/report.json`` (schema in DESIGN.md), ``OUT/report.md``
and ``OUT/plots/*.png``; other protocols add their own top-level key through
:func:`merge_section`. The Markdown is made from the JSON alone (:func:`format_markdown`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.protocol import evaluate_splits, load_splits
from backbone_ssl.export import Encoder
from backbone_ssl.io import write_json_atomic, write_text_atomic

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
BASELINE_TAG = "_baseline"
PIXELS_TAG = "_pixels"


def encoder_report_block(encoder: Encoder) -> dict[str, Any]:
    """The report's ``encoder`` block: the export metadata plus ``arch`` and ``input_size``."""
    return {**encoder.meta, "arch": encoder.arch, "input_size": encoder.input_size}


def run_eval(
    encoder: Encoder,
    train_dir: str | os.PathLike,
    test_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    k: int = 20,
    t: float = 0.07,
    baseline: Encoder | None = None,
    seed: int = 0,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    knn_index: str = "flat",
    nprobe: int | None = None,
    pixels: Encoder | None = None,
) -> dict[str, Any]:
    """Evaluate ``encoder`` (and ``baseline``, ``pixels`` on the same images); write the report.

    ``pixels`` is the raw-pixel baseline (:func:`~backbone_ssl.evaluation.pixels.pixels_like`);
    it adds ``pixels: {"size", "knn", "linear"}`` and ``plots/*_pixels.png``.

    Writes ``out_dir/report.json`` (a fresh report: call :func:`merge_section` afterwards for
    other protocols), ``out_dir/report.md`` and
    ``out_dir/plots/{retrieval,embedding}[_baseline].png``.
    Returns the report dict.
    """
    out_dir = Path(out_dir)
    plots_dir = out_dir / PLOTS_DIR
    splits = load_splits(train_dir, test_dir)
    run = {
        "k": k,
        "t": t,
        "seed": seed,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "plots_dir": plots_dir,
        "device": device,
        "knn_index": knn_index,
        "nprobe": nprobe,
    }
    result = evaluate_splits(encoder, splits, **run)
    report: dict[str, Any] = {
        "encoder": encoder_report_block(encoder),
        "n_train": result["n_train"],
        "n_test": result["n_test"],
        "num_classes": result["num_classes"],
        "knn": result["knn"],
        "linear": result["linear"],
    }
    if baseline is not None:
        base = evaluate_splits(baseline, splits, tag=BASELINE_TAG, **run)
        report["baseline"] = {"arch": baseline.arch, "knn": base["knn"], "linear": base["linear"]}
    if pixels is not None:
        pix = evaluate_splits(pixels, splits, tag=PIXELS_TAG, **run)
        report["pixels"] = {"size": pixels.input_size, "knn": pix["knn"], "linear": pix["linear"]}
    report["skipped"] = result["skipped"]
    write_report(out_dir, report)
    return report


def read_report(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``out_dir/report.json`` as a dict (``{}`` when it does not exist yet)."""
    path = Path(out_dir) / REPORT_JSON
    if not path.exists():
        return {}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not isinstance(report, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return report


def write_report(out_dir: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write ``report.json`` and the matching ``report.md`` into ``out_dir`` atomically."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / REPORT_JSON, report)
    write_text_atomic(out_dir / REPORT_MD, format_markdown(report, out_dir))


def merge_section(out_dir: str | os.PathLike, key: str, value: Any) -> dict[str, Any]:
    """Add or replace top-level ``key`` of ``out_dir/report.json`` (created when missing) and
    regenerate ``report.md``; returns the updated report."""
    report = read_report(out_dir)
    report[key] = value
    write_report(out_dir, report)
    return report


# ---- report.md ---------------------------------------------------------------------------
def _pct(value: Any) -> str:
    """A fraction as a percentage with one decimal, or ``–`` when absent."""
    return f"{100.0 * float(value):.1f}" if isinstance(value, (int, float)) else "–"


def _encoder_label(info: dict[str, Any]) -> str:
    """``arch`` plus the pretraining method when known, e.g. ``resnet18 (dino)``."""
    arch = str(info.get("arch", "encoder"))
    method = info.get("method")
    return f"{arch} ({method})" if method else arch


def _metric_row(label: str, section: dict[str, Any]) -> str:
    knn, linear = section.get("knn", {}), section.get("linear", {})
    cells = [knn.get("top1"), knn.get("top5"), knn.get("nn1"), linear.get("top1")]
    return "| " + " | ".join([label, *(_pct(c) for c in cells)]) + " |"


def _knn_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """kNN / linear accuracies (%), one row per ``(label, section)`` that holds them."""
    lines = [
        "| encoder | kNN top-1 (%) | kNN top-5 (%) | 1-NN (%) | linear top-1 (%) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [_metric_row(name, sec) for name, sec in rows if "knn" in sec or "linear" in sec]
    return "\n".join(lines) if len(lines) > 2 else ""


def _icartoonface_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """iCartoonFace rank-1 (%), one row per ``(label, section)`` that holds it."""
    lines = [
        f"| iCartoonFace | {name} | {_pct(icf.get('rank1'))} | {icf.get('probes', '–')} |"
        for name, sec in rows
        if isinstance(icf := sec.get("icartoonface"), dict)
    ]
    if not lines:
        return ""
    return "| protocol | encoder | rank-1 (%) | probes |\n|---|---|---:|---:|\n" + "\n".join(lines)


def format_table(report: dict[str, Any]) -> str:
    """Markdown tables of a report (accuracies in %): kNN and linear probe with one row per
    encoder (random init second, raw pixels third), then iCartoonFace rows when that protocol
    has been run."""
    rows = [(_encoder_label(report.get("encoder", {})), report)]
    if isinstance(base := report.get("baseline"), dict):
        rows.append((f"baseline: {base.get('arch', '?')}", base))
    if isinstance(pix := report.get("pixels"), dict):
        rows.append((f"baseline: raw pixels {pix.get('size', '?')} px", pix))
    tables = [_knn_table(rows), _icartoonface_table(rows)]
    if tables[0]:
        knn = report.get("knn", {})
        tables[0] += f"\n\nkNN: k={knn.get('k', '?')}, t={knn.get('t', '?')}"
        if knn.get("index", "flat") != "flat":
            tables[0] += (f", approximate {knn['index']} search (nlist={knn.get('nlist')}, "
                          f"nprobe={knn.get('nprobe')}, recall@k {knn.get('recall_at_k')} on "
                          f"{knn.get('recall_queries')} queries checked against exact search)")
    tables = [t for t in tables if t]
    return "\n\n".join(tables) if tables else "(no results)"


def _counts_lines(report: dict[str, Any]) -> list[str]:
    """Bullet lines with image and identity counts and skipped files."""
    lines = []
    if "n_train" in report:
        lines.append(
            f"- train: {report['n_train']} images, {report.get('num_classes', '?')} identities; "
            f"test: {report.get('n_test', '?')} images"
        )
    skipped = report.get("skipped")
    if skipped:
        lines.append(
            f"- skipped: {skipped.get('train', 0)} undecodable train and {skipped.get('test', 0)} "
            f"undecodable test images; {skipped.get('dropped_unknown', 0)} test images of "
            "identities absent from train"
        )
    return lines


def format_markdown(report: dict[str, Any], out_dir: str | os.PathLike | None = None) -> str:
    """The whole ``report.md``: tables, counts, and the plots found in ``out_dir/plots``."""
    info = report.get("encoder", {})
    parts = [f"# Evaluation: {_encoder_label(info)}", format_table(report)]
    counts = _counts_lines(report)
    if counts:
        parts.append("\n".join(counts))
    details = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
    if details:
        parts.append("Encoder: " + ", ".join(f"{k}={v}" for k, v in details.items()))
    if out_dir is not None:
        pngs = sorted((Path(out_dir) / PLOTS_DIR).glob("*.png"))
        parts.extend(f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in pngs)
    return "\n\n".join(parts) + "\n"
