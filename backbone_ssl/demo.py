"""``backbone-ssl demo``: toy faces -> SSL pretraining -> eval beside random init and raw pixels.

The method and its recipe come from ``configs/demo.yaml`` (the recipe study's winner on val,
``benchmarks/RECIPES.md``).

The online kNN monitor watches ``split/val``; ``split/test`` is only reported. A second table
evaluates the same three encoders on golden faces by character (a small toy comics set cut by
``golden prepare``; :mod:`backbone_ssl.data.faces_by_character`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from backbone_ssl.config import default_config_file
from backbone_ssl.io import write_text_atomic


def run_demo(out: str | Path = "demo_out", overrides: Sequence[str] = ()) -> str:
    """Run the whole demo into ``out``; returns the markdown written to ``out/report.md``."""
    from backbone_ssl.data.toy import write_toy_faces
    from backbone_ssl.evaluation.pixels import pixels_like
    from backbone_ssl.evaluation.report import format_table, run_eval
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.train import pretrain

    out = Path(out)
    t0 = time.perf_counter()
    data = out / "toy_faces"
    if not (data / "toy_faces.json").is_file():
        write_toy_faces(data, identities=50, per_identity=40, size=64, seed=0)
    t_data = time.perf_counter() - t0
    train_dir, test_dir = data / "split" / "train", data / "split" / "test"
    val_dir = data / "split" / "val"
    cfg_file = default_config_file("demo")
    method = str(OmegaConf.load(cfg_file).method)
    run_dir = out / method
    if run_dir.exists():  # the demo is reproducible: start it afresh
        shutil.rmtree(run_dir)
    res = pretrain(
        method, config_file=str(cfg_file), data=str(train_dir),
        out=str(run_dir),
        overrides=[f"data.val_train={train_dir}", f"data.val_test={val_dir}", *overrides],
    )
    t_train = time.perf_counter() - t0 - t_data
    encoder = resolve_encoder(str(res.encoder_dir))
    baseline = resolve_encoder(f"random:{encoder.arch}", input_size=encoder.input_size)
    pixels = pixels_like(encoder)
    report = run_eval(encoder, train_dir, test_dir, out / "eval", baseline=baseline, pixels=pixels)
    by_char = faces_by_character(out / "comics")
    char_report = run_eval(encoder, by_char / "train", by_char / "test", out / "eval_characters",
                           baseline=baseline, pixels=pixels)
    total = time.perf_counter() - t0
    t_eval = total - t_train - t_data
    text = "\n".join([
        "# backbone-ssl demo",
        "",
        f"{METHOD_TITLES.get(method, method)} ({encoder.arch}, {encoder.input_size}px) "
        f"pretrained for {res.steps} steps on "
        f"{report['n_train']} toy cartoon faces ({report['num_classes']} identities; "
        f"{round(res.images_per_second * res.seconds)} images seen, {res.seconds:.0f}s), "
        f"online kNN monitor on split/val; evaluated once on {report['n_test']} split/test "
        "images of the same identities.",
        "",
        format_table(report),
        "",
        verdict(report),
        "",
        "## Golden faces by character (toy comics, golden prepare crops)",
        "",
        f"{char_report['num_classes']} characters, {char_report['n_train']} train (gallery) / "
        f"{char_report['n_test']} test crops (split by panel; val kept for choices).",
        "",
        format_table(char_report),
        "",
        verdict(char_report),
        "",
        f"Time: {total:.0f}s total (data {t_data:.0f}s, pretraining {t_train:.0f}s at "
        f"{res.images_per_second:.0f} images/s, eval {t_eval:.0f}s).",
        f"Run: {run_dir} (metrics.csv, plots/, checkpoints/, encoder/); eval: {out / 'eval'}.",
        "",
    ])
    write_text_atomic(out / "report.md", text)
    return text


def faces_by_character(root: Path) -> Path:
    """A small toy comics set, prepared by ``golden prepare``; returns its faces_by_character."""
    from backbone_ssl.data.golden import prepare
    from backbone_ssl.data.toy_comics import write_toy_comics

    comics, prep = root / "toy_comics", root / "prep"
    if not (comics / "toy_comics.json").is_file():
        write_toy_comics(comics, books=DEMO_BOOKS, pages=DEMO_PAGES, seed=0)
    if not (prep / "faces_by_character" / "faces_by_character.json").is_file():
        prepare(comics / "raw_panel_images", comics / "face_annotations", prep)
    return prep / "faces_by_character"


#: How the report names each method.
METHOD_TITLES = {"dino": "DINO", "byol": "BYOL", "simclr": "SimCLR", "nnclr": "NNCLR",
                 "mocov2": "MoCo v2", "vicreg": "VICReg", "barlowtwins": "Barlow Twins"}

#: Toy comics for the faces-by-character table (a few seconds to draw and prepare).
DEMO_BOOKS, DEMO_PAGES = 12, 4


def verdict(report: dict[str, Any]) -> str:
    """One plain sentence: does the encoder beat raw pixels (and random init) on kNN top-1?"""
    enc = report["knn"]["top1"]
    lines = []
    for key, name in (("pixels", "raw pixels"), ("baseline", "random init")):
        if key not in report:
            continue
        other = report[key]["knn"]["top1"]
        gap = 100 * (enc - other)
        word = "beats" if gap > 0 else "does NOT beat"
        lines.append(f"The encoder {word} {name} on kNN top-1: {100 * enc:.1f}% vs "
                     f"{100 * other:.1f}% ({gap:+.1f} points, one seed).")
    return " ".join(lines)
