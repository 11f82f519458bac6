"""Recipe study for issue 13: which CPU recipe makes an SSL encoder beat raw pixels on toy faces.

Protocol (choose on val only, test once at the end; docs/EVALUATION.md):

1. the demo's data: ``toy faces`` (50 identities x 40 images, 64 px, seed 0) under ``ROOT/faces``
   with its native ``split/{train,val,test}`` (20 / 10 / 10 images per identity), and the demo's
   faces-by-character set (toy comics -> ``golden prepare``) under ``ROOT/comics``;
2. every variant pretrains on ``split/train`` for a fixed number of optimiser steps;
   its exported encoder is embedded and scored by cosine kNN (k 20, t 0.07, the eval defaults):
   toy faces gallery ``split/train`` -> queries ``split/val``; faces by character gallery
   ``train`` -> queries ``val``. Raw pixels and random init are scored the same way;
3. ``--test`` also scores ``split/train -> split/test`` and faces-by-character ``train -> test``
   (keys ``test_*``, beside the val ones; do this once, for the chosen recipe). ``--baselines
   --test`` scores the baselines on test.

Results are appended as JSON lines to ``ROOT/results.jsonl`` (variant, seed, steps, images seen,
wall time, kNN top-1 / 1-NN on both sets).

Usage::

    python benchmarks/recipe_study.py --root /tmp/rs --baselines
    python benchmarks/recipe_study.py --root /tmp/rs --variant demo --seeds 0 --steps 300
    python benchmarks/recipe_study.py --root /tmp/rs --variant demo --set optim.lr=0.003 --tag lr3
    python benchmarks/recipe_study.py --root /tmp/rs --variant demo --seeds 0 1 2 --test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: variant name -> (method, config file under configs/ or benchmarks/, overrides)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "demo_old": ("dino", "benchmarks/demo_old.yaml", []),
    "demo": ("simclr", "configs/demo.yaml", []),
    # the DINO demo recipe before this study (its "demo" rows in RECIPES.md, seed 0, 300 steps)
    "demo_dino_2026_12_01": ("dino", "benchmarks/demo_dino_2026-12-01.yaml", []),
    # dino_cpu / byol_cpu: the files as they are now (the study's winners); the screening rows in
    # RECIPES.md name the overrides they were measured with on the earlier files
    "dino_cpu": ("dino", "configs/dino_cpu.yaml", []),
    # issue 18: configs/dino.yaml (the shipped defaults: resnet18, 64 px, local crops) as it is
    # now, and as it was before the fix
    "dino": ("dino", "configs/dino.yaml", []),
    "dino_defaults_2026_12_02": ("dino", "benchmarks/dino_defaults_2026-12-02.yaml", []),
    "simclr_cpu": ("simclr", "configs/simclr_cpu.yaml", []),
    "byol_cpu": ("byol", "configs/byol_cpu.yaml", []),
    # supervised ceiling (labels of split/train) at the CPU recipes' size and step budget
    "identity32": ("identity", "configs/identity.yaml",
                   ["model.arch=resnet10t", "data.image_size=32", "data.batch_size=64"]),
    # the other lightly methods at the CPU recipe's size (resnet10t, 32 px, batch 64)
    "simclr32": ("simclr", "configs/simclr.yaml",
                 ["model.arch=resnet10t", "data.image_size=32", "simclr.min_scale=0.5"]),
    "nnclr32": ("nnclr", "configs/nnclr.yaml",
                ["model.arch=resnet10t", "data.image_size=32", "nnclr.min_scale=0.5"]),
}


def make_data(root: Path) -> dict[str, Path]:
    """The demo's toy faces and faces-by-character set under ``root``; returns their folders."""
    from backbone_ssl.data.toy import write_toy_faces
    from backbone_ssl.demo import faces_by_character

    faces = root / "faces"
    if not (faces / "toy_faces.json").is_file():
        write_toy_faces(faces, identities=50, per_identity=40, size=64, seed=0)
    fbc = faces_by_character(root / "comics")
    split = faces / "split"
    return {"train": split / "train", "val": split / "val", "test": split / "test",
            "prep": fbc.parent, "fbc_train": fbc / "train", "fbc_val": fbc / "val",
            "fbc_test": fbc / "test"}


def knn_top1(encoder, gallery: Path, queries: Path) -> dict:
    """Cosine kNN (k 20, t 0.07) of ``queries`` against ``gallery`` with ``encoder``."""
    from backbone_ssl.evaluation.features import embed_folder
    from backbone_ssl.evaluation.knn import knn_neighbours, knn_scores

    g, gl, _, classes, _ = embed_folder(encoder, gallery)
    q, ql, _, qclasses, _ = embed_folder(encoder, queries)
    assert classes == qclasses, "gallery and queries must hold the same identities"
    sims, idx = knn_neighbours(g, q, 20)
    return knn_scores(sims, idx, gl, ql, 20, 0.07, len(classes))


def score(encoder, data: dict[str, Path], split: str) -> dict:
    """kNN top-1 / 1-NN on toy faces and on faces by character, queries from ``split``."""
    faces = knn_top1(encoder, data["train"], data[split])
    chars = knn_top1(encoder, data["fbc_train"], data[f"fbc_{split}"])
    return {"top1": round(faces["top1"], 4), "nn1": round(faces["nn1"], 4),
            "char_top1": round(chars["top1"], 4), "char_nn1": round(chars["nn1"], 4)}


def run_variant(name: str, seed: int, steps: int, root: Path,
                data: dict[str, Path], split: str, extra: list[str], tag: str,
                pretrain_on: str = "faces") -> dict:
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.train import pretrain

    method, cfg_file, base = VARIANTS[name]
    label = f"{name}{'-' + tag if tag else ''}{'-comics' if pretrain_on == 'comics' else ''}"
    # faces: toy faces split/train; comics: the toy comics' `golden prepare` output (its faces/,
    # the only data with book / panel order, which data.sequence_positives needs)
    train_data = data["train"] if pretrain_on == "faces" else data["prep"]
    run = root / "runs" / f"{label}-s{seed}-{steps}-{split}"
    if run.exists():  # replace only a run this script's pretrain wrote (it holds the marker)
        if not (run / ".backbone-ssl-output.json").is_file():
            sys.exit(f"recipe_study: {run} exists and is not a backbone-ssl run; move it away")
        shutil.rmtree(run)
    budget = [f"trainer.max_steps={steps}"]
    t0 = time.perf_counter()
    res = pretrain(method, config_file=str(REPO / cfg_file), data=str(train_data),
                   out=str(run),
                   overrides=[f"seed={seed}", *budget, "trainer.max_epochs=-1",
                              "trainer.enable_progress_bar=false",
                              f"data.val_train={data['train']}", f"data.val_test={data['val']}",
                              *base, *extra])
    wall = time.perf_counter() - t0
    enc = resolve_encoder(str(res.encoder_dir))
    scores = score(enc, data, "val")
    if split == "test":  # the chosen recipe: its val numbers and, once, its test numbers
        scores.update({f"test_{k}": v for k, v in score(enc, data, "test").items()})
    return {"variant": label, "seed": seed, "steps": res.steps, "split": split,
            "pretrain_s": round(res.seconds, 1), "wall_s": round(wall, 1),
            "images_per_s": round(res.images_per_second, 1), **scores,
            **collapse_signals(run / "metrics.csv"),
            "overrides": base + extra, "config": cfg_file, "pretrain_on": pretrain_on}


#: the collapse monitor's logged signals (issue 18), first and last logged value of each
SIGNALS = ("train/loss", "train/loss_collapse_value", "train/teacher_entropy",
           "train/collapse_std", "train/collapse_std_healthy", "train/collapsed", "train/koleo")


def collapse_signals(metrics_csv: Path) -> dict:
    """``{"loss_first": .., "loss_last": .., "teacher_entropy_last": .., ...}`` from a run's
    ``metrics.csv`` (signals a method does not log are left out)."""
    import csv

    first: dict[str, float] = {}
    last: dict[str, float] = {}
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            for key in SIGNALS:
                if row.get(key):
                    first.setdefault(key, float(row[key]))
                    last[key] = float(row[key])
    out = {}
    for key, value in last.items():
        name = key.removeprefix("train/")
        out[f"{name}_first"] = round(first[key], 4)
        out[f"{name}_last"] = round(value, 4)
    return out


def table(rows: list[dict]) -> str:
    """Markdown: one row per (variant, steps, split) with the mean +- std over its seeds."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["steps"], r["split"]), []).append(r)

    def cell(rs: list[dict], key: str) -> str:
        vals = [r[key] for r in rs if key in r]
        if not vals:
            return "-"
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{statistics.mean(vals):.3f} +- {statistics.stdev(vals):.3f}"

    out = ["| variant | overrides | steps | seeds | pretrain s | val kNN | val faces by char. "
           "| test kNN | test faces by char. |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (name, steps, _split), rs in groups.items():
        over = " ".join(f"`{o}`" for o in rs[0].get("overrides", [])) or "-"
        secs = [r["pretrain_s"] for r in rs if "pretrain_s" in r]
        sec = f"{sum(secs) / len(secs):.0f}" if secs else "-"
        if "test_top1" in rs[0] or rs[0]["split"] == "test" and not secs:
            test_faces = cell(rs, "test_top1") if secs else cell(rs, "top1")
            test_chars = cell(rs, "test_char_top1") if secs else cell(rs, "char_top1")
        else:
            test_faces = test_chars = "-"
        val_faces = cell(rs, "top1") if rs[0]["split"] == "val" or secs else "-"
        val_chars = cell(rs, "char_top1") if rs[0]["split"] == "val" or secs else "-"
        out.append(f"| {name} | {over} | {steps} | {len(rs)} | {sec} | {val_faces} | "
                   f"{val_chars} | {test_faces} | {test_chars} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/recipe_study")
    p.add_argument("--variant", action="append", default=[], choices=sorted(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every variant of this call")
    p.add_argument("--tag", default="", help="label for the --set overrides")
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pretrain-on", choices=("faces", "comics"), default="faces",
                   help="faces: toy faces split/train; comics: the toy comics' golden prepare "
                        "output (for data.sequence_positives)")
    p.add_argument("--baselines", action="store_true", help="score pixels and random init")
    p.add_argument("--table", action="store_true",
                   help="print ROOT/results.jsonl as a markdown table (mean +- std over seeds)")
    p.add_argument("--test", action="store_true",
                   help="score on split/test (once, for the chosen recipe)")
    args = p.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.table:
        lines = (root / "results.jsonl").read_text().splitlines()
        print(table([json.loads(line) for line in lines if line.strip()]))
        return
    data = make_data(root)
    split = "test" if args.test else "val"
    out = root / "results.jsonl"

    def emit(row: dict) -> None:
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    if args.baselines:
        from backbone_ssl.export import resolve_encoder

        for spec in ("pixels:32", "pixels:64", "random:resnet10t", "random:resnet18"):
            enc = resolve_encoder(spec, input_size=32)
            emit({"variant": spec, "seed": 0, "steps": 0, "split": split,
                  **score(enc, data, split)})
    for name in args.variant:
        for seed in args.seeds:
            emit(run_variant(name, seed, args.steps, root, data, split,
                             args.set, args.tag, args.pretrain_on))


if __name__ == "__main__":
    main()
