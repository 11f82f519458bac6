"""Recipe study for issue 13: which CPU recipe makes DINO / BYOL beat raw pixels on toy faces.

Protocol (choose on val only, test once at the end):

1. ``backbone-ssl toy faces`` (50 identities x 40 images, seed 0) under ``ROOT/faces``;
2. a deterministic val split carved out of ``split/train``: for every identity the images whose
   sorted position is in ``VAL_POSITIONS`` are copied to ``ROOT/val/<identity>/`` and the rest to
   ``ROOT/train/<identity>/`` (``split/test`` is never read while choosing);
3. every variant pretrains on ``ROOT/train`` for a fixed number of optimiser steps, its exported
   encoder is embedded and scored by cosine kNN (k 20, t 0.07, the eval defaults) with
   gallery = ``ROOT/train`` and queries = ``ROOT/val``; raw pixels and random init are scored the
   same way;
4. ``--test`` scores one named variant on ``split/train`` -> ``split/test`` (do this once).

Results are appended as JSON lines to ``ROOT/results.jsonl`` (variant, seed, steps, images seen,
wall time, kNN top-1 / nn1). The machine is shared: wall times are inflated, compare steps.

Usage::

    python benchmarks/recipe_study.py --root /tmp/i13a --variants demo dino_color --seeds 0
    python benchmarks/recipe_study.py --root /tmp/i13a --baselines
    python benchmarks/recipe_study.py --root /tmp/i13a --variants dino_color --seeds 0 1 2 --test
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

#: sorted positions (of the 30 ``split/train`` images of an identity) that go to val
VAL_POSITIONS = tuple(range(0, 30, 4))  # 8 of 30: 22 train + 8 val per identity

#: variant name -> (method, config file under configs/, overrides)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    # the demo as it was before this study (configs/demo.yaml at the start of issue 13)
    "demo_old": ("dino", "demo_old", []),
    # DINO, colour kept (identity), crops that keep the face, no rotation / solarisation
    "dino_color": ("dino", "dino_cpu", []),
    "dino_color_strongcj": ("dino", "dino_cpu", ["dino.cj_strength=0.8"]),
    "dino_color_lr3e-3": ("dino", "dino_cpu", ["optim.lr=0.003"]),
    "byol_color": ("byol", "byol_cpu", []),
    "byol_default32": ("byol", "byol_cpu", ["byol.min_scale=0.2", "byol.cj_strength=1.0"]),
}


def make_data(root: Path) -> tuple[Path, Path, Path, Path]:
    """Toy faces + the deterministic train/val split; returns (train, val, split_train, test)."""
    from backbone_ssl.data.toy import write_toy_faces

    faces = root / "faces"
    if not (faces / "toy_faces.json").is_file():
        write_toy_faces(faces, identities=50, per_identity=40, size=64, seed=0)
    split_train, split_test = faces / "split" / "train", faces / "split" / "test"
    train, val = root / "train", root / "val"
    if not (root / "split_done").is_file():
        for d in (train, val):
            if d.exists():
                shutil.rmtree(d)
        for ident in sorted(p for p in split_train.iterdir() if p.is_dir()):
            files = sorted(ident.iterdir())
            for pos, f in enumerate(files):
                dst = (val if pos in VAL_POSITIONS else train) / ident.name
                dst.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dst / f.name)
        (root / "split_done").write_text("ok\n")
    return train, val, split_train, split_test


def knn_top1(encoder, gallery: Path, queries: Path) -> dict:
    """Cosine kNN (k 20, t 0.07) of ``queries`` against ``gallery`` with ``encoder``."""
    from backbone_ssl.evaluation.features import embed_folder
    from backbone_ssl.evaluation.knn import knn_neighbours, knn_scores

    g, gl, _, classes, _ = embed_folder(encoder, gallery)
    q, ql, _, qclasses, _ = embed_folder(encoder, queries)
    assert classes == qclasses, "gallery and queries must hold the same identities"
    sims, idx = knn_neighbours(g, q, 20)
    return knn_scores(sims, idx, gl, ql, 20, 0.07, len(classes))


def run_variant(name: str, seed: int, steps: int, root: Path, gallery: Path, queries: Path,
                tag: str) -> dict:
    from backbone_ssl.config import default_config_file
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.train import pretrain

    method, cfg_name, extra = VARIANTS[name]
    cfg_file = (REPO / "benchmarks" / "demo_old.yaml" if cfg_name == "demo_old"
                else default_config_file(cfg_name))
    run = root / "runs" / f"{name}-s{seed}-{steps}-{tag}"
    if run.exists():
        shutil.rmtree(run)
    t0 = time.perf_counter()
    res = pretrain(method, config_file=str(cfg_file), data=str(gallery), out=str(run),
                   overrides=[f"seed={seed}", f"trainer.max_steps={steps}",
                              "trainer.max_epochs=-1", "trainer.enable_progress_bar=false",
                              *extra])
    wall = time.perf_counter() - t0
    enc = resolve_encoder(str(res.encoder_dir))
    knn = knn_top1(enc, gallery, queries)
    return {"variant": name, "seed": seed, "steps": res.steps, "split": tag,
            "images_seen": res.steps * 64, "pretrain_wall_s": round(wall, 1),
            "images_per_s": round(res.images_per_second, 1), "top1": knn["top1"],
            "nn1": knn["nn1"], "overrides": extra, "config": cfg_name}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/tmp/i13a")
    p.add_argument("--variants", nargs="*", default=[])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--baselines", action="store_true", help="score pixels and random init")
    p.add_argument("--test", action="store_true",
                   help="score on split/train -> split/test (once, for the chosen recipe)")
    args = p.parse_args(argv)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    train, val, split_train, split_test = make_data(root)
    gallery, queries, tag = (split_train, split_test, "test") if args.test else (train, val, "val")
    out = root / "results.jsonl"
    rows = []
    if args.baselines:
        from backbone_ssl.export import resolve_encoder

        for spec in ("pixels:32", "pixels:64", "random:resnet10t", "random:resnet18"):
            enc = resolve_encoder(spec, input_size=32)
            knn = knn_top1(enc, gallery, queries)
            rows.append({"variant": spec, "seed": 0, "steps": 0, "split": tag,
                         "top1": knn["top1"], "nn1": knn["nn1"]})
    for name in args.variants:
        for seed in args.seeds:
            rows.append(run_variant(name, seed, args.steps, root, gallery, queries, tag))
            with out.open("a") as f:
                f.write(json.dumps(rows[-1]) + "\n")
            print(json.dumps(rows[-1]), flush=True)
    if args.baselines:
        with out.open("a") as f:
            for r in rows[:4]:
                f.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
