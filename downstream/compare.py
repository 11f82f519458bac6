"""Run one downstream task for several encoders at the same budget and print one table.

    python -m downstream.compare --task {cloze,siamese,gan} --encoders ENC1 ENC2 ... \
        [--data PATH] [--out DIR] [key=value ...]

Every encoder gets the same config, overrides, data, split and seed (so the same step budget);
each run goes to ``OUT/<label>/`` and the table to ``OUT/compare.md`` (+ ``compare.json``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

from backbone_ssl.errors import UserError
from backbone_ssl.io import write_json_atomic, write_text_atomic

#: a ``key=value`` override (dotted config key), as opposed to an encoder spec or path
OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
#: task -> (metric, direction) columns of the table; ``+`` higher is better, ``-`` lower
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "cloze": [("psnr", "+"), ("ssim", "+"), ("l1", "-"), ("kid", "-"), ("fd", "-")],
    "siamese": [("accuracy", "+"), ("roc_auc", "+"), ("raw_roc_auc", "+"),
                ("icartoonface_rank1", "+")],
    "gan": [("kid", "-"), ("fd", "-"), ("kid_real", "-"), ("fd_real", "-")],
    "bigan": [("kid", "-"), ("fd", "-"), ("rec_l1", "-"), ("kid_real", "-"), ("fd_real", "-")],
    "vaegan": [("kid", "-"), ("fd", "-"), ("rec_l1", "-"), ("kid_real", "-"), ("fd_real", "-")],
}


def encoder_label(spec: str, taken: set[str]) -> str:
    """A short unique folder name for an encoder spec (``random:resnet18`` -> ``random-resnet18``,
    ``runs/dino/encoder`` -> ``dino``)."""
    if spec.startswith("random:"):
        base = "random-" + spec.split(":", 1)[1]
    else:
        p = Path(spec)
        base = p.parent.name if p.name in ("encoder", "last.ckpt") or p.suffix == ".ckpt" \
            else p.name
        base = base or "encoder"
    label, k = base, 2
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    taken.add(label)
    return label


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("n/a" if v is None else str(v))


def format_table(task: str, rows: list[dict]) -> str:
    """Markdown table: one row per encoder."""
    cols = [(k, d) for k, d in COLUMNS[task] if any(r["metrics"].get(k) is not None
                                                     for r in rows)]
    head = ["encoder", "method", "arch", "pretrain steps", "task steps", "seconds",
            *(f"{k} {'↑' if d == '+' else '↓'}" for k, d in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e = r["encoder"]
        cells = [r["label"], str(e.get("method", "?")), e["arch"], _fmt(e.get("steps")),
                 _fmt(r["budget"]["steps"]), f"{r['budget']['seconds']:.0f}",
                 *(_fmt(r["metrics"].get(k)) for k, _ in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_compare(task: str, encoders: Sequence[str], *, data: str, out: str,
                overrides: Sequence[str] = ()) -> str:
    """Run ``task`` once per encoder into ``out/<label>``; write and return the table."""
    from downstream import run_downstream

    if task not in COLUMNS:
        raise UserError(f"unknown task '{task}' (choose from {', '.join(COLUMNS)})")
    if not encoders:
        raise UserError("--encoders needs at least one encoder")
    out_dir = Path(out)
    taken: set[str] = set()
    rows = []
    for spec in encoders:
        label = encoder_label(spec, taken)
        logging.getLogger(__name__).info("compare %s: %s -> %s", task, spec, out_dir / label)
        report = run_downstream(task, encoder=spec, data=data, out=str(out_dir / label),
                                overrides=overrides)
        rows.append({"label": label, **report})
    table = format_table(task, rows)
    budget = ", ".join(overrides) if overrides else "config defaults"
    text = (f"# downstream {task}: {len(rows)} encoders, same budget\n\n"
            f"Data: `{data}`; overrides: {budget}.\n\n{table}\n")
    write_text_atomic(out_dir / "compare.md", text)
    write_json_atomic(out_dir / "compare.json",
                      {"task": task, "data": data, "overrides": list(overrides),
                       "rows": [{k: r[k] for k in ("label", "encoder", "budget", "metrics")}
                                for r in rows]})
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2 with one line on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m downstream.compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=sorted(COLUMNS))
    parser.add_argument("--encoders", required=True, nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="compare_out")
    args, extra = parser.parse_known_args(argv)
    # --encoders is greedy: key=value items after it are overrides, not encoders
    extra += [e for e in args.encoders if OVERRIDE.match(e)]
    args.encoders = [e for e in args.encoders if not OVERRIDE.match(e)]
    bad = [a for a in extra if not OVERRIDE.match(a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        table = run_compare(args.task, args.encoders, data=args.data, out=args.out,
                            overrides=extra)
    except UserError as exc:
        print(f"downstream.compare: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    print(table)
    print(f"table: {Path(args.out) / 'compare.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
