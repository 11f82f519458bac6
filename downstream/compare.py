"""Run downstream tasks for several encoders at the same budget and print one table.

    python -m downstream.compare --task TASK --encoders ENC1 ENC2 ... --data PATH \
        [--out DIR] [key=value ...]
    python -m downstream.compare --suite {faces,cloze} --minutes M --encoders ENC1 ENC2 ... \
        --data PATH [--seeds 0 1] [--models a,b] [--size 32] [--latent-dim 64] [key=value ...]

``--task``: every encoder gets the same config, overrides, data, split and seed (so the same
step budget); each run goes to ``OUT/<label>/`` and the table to ``OUT/compare.md``
(+ ``compare.json``).

``--suite`` (:func:`run_suite`): every face generator (DCGAN, DCGAN with the encoder in D, BiGAN,
VAE-GAN, IntroVAE, StyleGAN2-style) or every cloze variant (VAE+GAN, autoencoder, StyleGAN
decoder, separate face encoding by a BiGAN or a VAE-GAN), each with each encoder (e.g.
``random:ARCH`` and a pretrained one) and each seed, at equal wall-clock minutes
(``trainer.max_minutes``); the table gives the mean and the half range over the seeds of KID and
FD (face models: also coverage and diversity; cloze: also PSNR and SSIM of the generated face,
which is the hole). ``TASK:key=value`` applies an override to one task only.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from backbone_ssl.errors import UserError
from backbone_ssl.io import write_json_atomic, write_text_atomic

#: a ``key=value`` override (dotted config key), as opposed to an encoder spec or path
OVERRIDE = re.compile(r"^(?:[a-z]+:)?[A-Za-z_][\w.]*=")
#: task -> (metric, direction) columns of the table; ``+`` higher is better, ``-`` lower, ``~``
#: nearest 1 (``diversity``: generated faces as varied as real ones)
ARROWS = {"+": "↑", "-": "↓", "~": "(1 = real)"}
COLUMNS: dict[str, list[tuple[str, str]]] = {
    "cloze": [("psnr", "+"), ("ssim", "+"), ("l1", "-"), ("kid", "-"), ("fd", "-")],
    "siamese": [("accuracy", "+"), ("roc_auc", "+"), ("raw_roc_auc", "+"),
                ("icartoonface_rank1", "+")],
    "gan": [("kid", "-"), ("fd", "-"), ("coverage", "+"), ("diversity", "~"), ("kid_real", "-"),
            ("fd_real", "-")],
    "bigan": [("kid", "-"), ("fd", "-"), ("rec_l1", "-"), ("kid_real", "-"), ("fd_real", "-")],
    "vaegan": [("kid", "-"), ("fd", "-"), ("rec_l1", "-"), ("kid_real", "-"), ("fd_real", "-")],
    "introvae": [("kid", "-"), ("fd", "-"), ("rec_l1", "-"), ("kid_real", "-"),
                 ("fd_real", "-")],
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
            *(f"{k} {ARROWS[d]}" for k, d in cols)]
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


# ---- suites: every model of a family, equal wall-clock minutes, several seeds --------------
@dataclass(frozen=True)
class SuiteRow:
    """One model of a suite: ``task`` with ``overrides`` (and ``config``, a preset under
    configs/); ``uses_encoder=False`` runs once per seed (the encoder plays no part);
    ``face_model``: a face-model task trained first on the same data (cloze face latents)."""

    key: str
    label: str
    task: str
    overrides: tuple[str, ...] = ()
    config: str | None = None
    uses_encoder: bool = True
    face_model: str | None = None


SUITES: dict[str, list[SuiteRow]] = {
    "faces": [
        SuiteRow("dcgan", "DCGAN", "gan", ("model.encoder_in_discriminator=false",),
                 uses_encoder=False),
        SuiteRow("dcgan-encoder-d", "DCGAN, encoder in D", "gan"),
        SuiteRow("bigan", "BiGAN", "bigan"),
        SuiteRow("vaegan", "VAE-GAN", "vaegan"),
        SuiteRow("introvae", "IntroVAE", "introvae"),
        SuiteRow("stylegan", "StyleGAN2-style", "stylegan", uses_encoder=False),
    ],
    "cloze": [
        SuiteRow("vae-gan", "CNN-LSTM VAE + DCGAN", "cloze"),
        SuiteRow("autoencoder", "CNN-LSTM autoencoder", "cloze", config="cloze_autoencoder"),
        SuiteRow("stylegan", "CNN-LSTM + StyleGAN decoder", "cloze", ("model.decoder=stylegan",)),
        SuiteRow("face-bigan", "face latent: BiGAN", "cloze", ("model.face_latent=bigan",),
                 face_model="bigan"),
        SuiteRow("face-vae", "face latent: VAE-GAN", "cloze", ("model.face_latent=vae",),
                 face_model="vaegan"),
    ],
}
SUITE_COLUMNS = {"faces": [("kid", "-"), ("fd", "-"), ("coverage", "+"), ("diversity", "~")],
                 "cloze": [("kid", "-"), ("fd", "-"), ("psnr", "+"), ("ssim", "+")]}


def _task_overrides(task: str, overrides: Sequence[str]) -> list[str]:
    """The overrides for ``task``: plain ``key=value`` ones and ``task:key=value`` ones."""
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and "=" not in head:
            if head == task:
                out.append(rest)
        else:
            out.append(o)
    return out


def _size_keys(task: str, size: int, latent: int) -> list[str]:
    sizes = ([f"data.panel_size={size}", f"data.face_size={size}"] if task == "cloze"
             else [f"data.image_size={size}"])
    latents = ([f"model.z_dim={latent}", f"model.w_dim={latent}"] if task == "stylegan"
               else [f"model.latent_dim={latent}"])
    return [*sizes, *latents, "data.resize_to_encoder=true"]


def mean_spread(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and half range (``(max - min) / 2``) of the finite values; ``(None, None)`` if none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def run_suite(suite: str, encoders: Sequence[str], *, data: str, out: str, minutes: float,
              seeds: Sequence[int] = (0, 1), models: Sequence[str] | None = None,
              size: int = 32, latent_dim: int = 64, overrides: Sequence[str] = ()) -> str:
    """Run every model of ``suite`` for each encoder and seed for ``minutes`` of training each
    (a cloze face latent's face model trains ``minutes`` first, on the same data); write
    ``out/compare.md`` and ``out/compare.json`` and return the table."""
    from backbone_ssl.config import CONFIG_DIR
    from downstream import run_downstream

    if suite not in SUITES:
        raise UserError(f"unknown suite '{suite}' (choose from {', '.join(SUITES)})")
    rows_spec = SUITES[suite]
    if models:
        known = {r.key for r in rows_spec}
        bad = [m for m in models if m not in known]
        if bad:
            raise UserError(f"--models: unknown {', '.join(bad)} for suite {suite} (choose from "
                            f"{', '.join(sorted(known))})")
        rows_spec = [r for r in rows_spec if r.key in models]
    if not encoders:
        raise UserError("--encoders needs at least one encoder")
    if not minutes > 0:
        raise UserError(f"--minutes must be > 0, got {minutes}")
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    out_dir = Path(out)
    taken: set[str] = set()
    labels = [encoder_label(e, taken) for e in encoders]
    log = logging.getLogger(__name__)
    budget = [f"trainer.max_minutes={minutes}", "trainer.max_steps=100000000"]
    runs: list[dict] = []
    for row in rows_spec:
        for spec, label in zip(encoders, labels):
            if not row.uses_encoder and spec != encoders[0]:
                continue
            for seed in seeds:
                folder = out_dir / row.key / (label if row.uses_encoder else "none") / f"seed{seed}"
                extra: list[str] = []
                if row.face_model:
                    face_over = [*_size_keys(row.face_model, size, latent_dim), *budget,
                                 f"seed={seed}", *_task_overrides(row.face_model, overrides),
                                 "trainer.save_checkpoint=true"]  # the cloze run loads it
                    log.info("suite %s: face model %s -> %s", suite, row.face_model,
                             folder / "face_model")
                    run_downstream(row.face_model, encoder=spec, data=data,
                                   out=str(folder / "face_model"), overrides=face_over)
                    extra.append(f"model.face_model={folder / 'face_model'}")
                over = [*_size_keys(row.task, size, latent_dim), *budget, f"seed={seed}",
                        *row.overrides, *extra, *_task_overrides(row.task, overrides)]
                cfg_file = str(CONFIG_DIR / f"{row.config}.yaml") if row.config else None
                log.info("suite %s: %s, %s, seed %d -> %s", suite, row.label, spec, seed,
                         folder / "run")
                report = run_downstream(row.task, encoder=spec, data=data,
                                        out=str(folder / "run"), overrides=over,
                                        config_file=cfg_file)
                runs.append({"model": row.key, "label": row.label,
                             "encoder": label if row.uses_encoder else "-", "seed": seed,
                             "metrics": report["metrics"], "budget": report["budget"],
                             "reference": report.get("reference", {})})
    table = format_suite_table(suite, runs)
    ref = next((r["reference"].get("encoder") for r in runs if r["reference"]), "?")
    text = (f"# downstream suite {suite}: {minutes} training minutes per run, seeds "
            f"{', '.join(map(str, seeds))}\n\nData: `{data}`; {size} px; latent {latent_dim}; "
            f"KID/FD reference encoder: `{ref}`; overrides: "
            f"{', '.join(overrides) if overrides else 'none'}. Values: mean ± half range over "
            f"the seeds. A face-latent row's face model trained another {minutes} minutes "
            f"first.\n\n{table}\n")
    write_text_atomic(out_dir / "compare.md", text)
    write_json_atomic(out_dir / "compare.json",
                      {"suite": suite, "data": data, "minutes": minutes, "seeds": list(seeds),
                       "size": size, "latent_dim": latent_dim, "overrides": list(overrides),
                       "runs": runs})
    return table


def format_suite_table(suite: str, runs: list[dict]) -> str:
    """Markdown: one row per (model, encoder), each metric as ``mean ± half range``."""
    cols = SUITE_COLUMNS[suite]
    head = ["model", "encoder", "seeds", "steps", "train s",
            *(f"{k} {ARROWS[d]}" for k, d in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["encoder"]), []).append(r)
    for (label, enc), rs in groups.items():
        steps, _ = mean_spread([r["budget"]["steps"] for r in rs])
        secs, _ = mean_spread([r["budget"]["seconds"] for r in rs])
        cells = [label, enc, str(len(rs)), f"{steps:.0f}", f"{secs:.0f}"]
        for k, _ in cols:
            mean, spread = mean_spread([r["metrics"].get(k) for r in rs])
            cells.append("n/a" if mean is None else f"{mean:.4g} ± {spread:.2g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2 with one line on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m downstream.compare",
                                     description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", choices=sorted(COLUMNS))
    what.add_argument("--suite", choices=sorted(SUITES),
                      help="every face generator or cloze variant at equal minutes")
    parser.add_argument("--encoders", required=True, nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", default="compare_out")
    parser.add_argument("--minutes", type=float, help="--suite: training minutes per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", help="--suite: comma-separated subset of its models")
    parser.add_argument("--size", type=int, default=32, help="--suite: face / panel side")
    parser.add_argument("--latent-dim", type=int, default=64, help="--suite: latent size")
    args, extra = parser.parse_known_args(argv)
    # --encoders is greedy: key=value items after it are overrides, not encoders
    extra += [e for e in args.encoders if OVERRIDE.match(e)]
    args.encoders = [e for e in args.encoders if not OVERRIDE.match(e)]
    bad = [a for a in extra if not OVERRIDE.match(a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.suite and args.minutes is None:
        parser.error("--suite needs --minutes (training minutes per run)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from backbone_ssl.quiet import install_quiet_filters

    install_quiet_filters()  # as the backbone-ssl command: known library noise dropped
    from backbone_ssl.outdir import prepare_out_dir

    try:
        # a folder this command did not write (a user's compare.md) is refused, never written into
        prepare_out_dir(args.out, "downstream.compare", sources=[args.data, *args.encoders])
        if args.suite:
            table = run_suite(args.suite, args.encoders, data=args.data, out=args.out,
                              minutes=args.minutes, seeds=args.seeds,
                              models=args.models.split(",") if args.models else None,
                              size=args.size, latent_dim=args.latent_dim, overrides=extra)
        else:
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
