"""The CPU recipes of issue 13 (configs/demo.yaml, simclr_cpu.yaml, dino_cpu.yaml, byol_cpu.yaml).

Whether a recipe beats raw pixels is measured by benchmarks/recipe_study.py at the demo's budget
(benchmarks/RECIPES.md, 3 seeds). The check that stays (slow): the demo recipe, trained on the
demo's own data for part of its budget, must beat raw pixels on ``split/val``; at a smaller
test-sized set (12 x 24 images, 100 steps) no recipe does (SimCLR 0.39 vs pixels 0.63).
"""

from __future__ import annotations

import pytest

from backbone_ssl.config import default_config_file, load_config
from backbone_ssl.methods.dino import DINO, DINOConfig


def _grey_p(transform) -> list[float]:
    """RandomGrayscale probabilities of every view of a lightly multi-view transform."""
    out = []
    for view in transform.transforms:
        for step in view.transform.transforms:
            if type(step).__name__ == "RandomGrayscale":
                out.append(float(step.p))
    return out


def test_dino_colour_keys_reach_the_transform():
    default = DINO(load_config(DINOConfig, "dino", None, ["model.arch=resnet10t"]))
    # 2 global + 2 local views; dino.yaml's gentle grey scale (issue 18; lightly's is 0.2)
    assert _grey_p(default.train_transform()) == [0.02] * 4
    cfg = load_config(DINOConfig, "dino", None, ["model.arch=resnet10t", "dino.n_local_views=0",
                                                 "dino.random_gray_scale=0.05",
                                                 "dino.cj_sat=0.1"])
    tr = DINO(cfg).train_transform()
    assert _grey_p(tr) == [0.05, 0.05]
    jitter = [s.transforms[0] for v in tr.transforms for s in v.transform.transforms
              if type(s).__name__ == "RandomApply"
              and type(s.transforms[0]).__name__ == "ColorJitter"]
    sat = jitter[0].saturation  # (1 - cj_sat * cj_strength, 1 + ...)
    assert sat == pytest.approx((1 - 0.1 * cfg.dino.cj_strength, 1 + 0.1 * cfg.dino.cj_strength))


def test_demo_config_is_the_simclr_cpu_recipe():
    """configs/demo.yaml says it is configs/simclr_cpu.yaml: keep the two in step."""
    from backbone_ssl.config import to_dict
    from backbone_ssl.methods.simclr import SimCLRConfig

    demo = load_config(SimCLRConfig, "simclr", default_config_file("demo"))
    cpu = load_config(SimCLRConfig, "simclr", default_config_file("simclr_cpu"))
    assert to_dict(demo) == to_dict(cpu)
    assert demo.model.arch == "resnet10t" and demo.optim.lr == 0.003


def test_byol_colour_keys_reach_both_views():
    from backbone_ssl.methods.byol import BYOL, BYOLConfig

    default = BYOL(load_config(BYOLConfig, "byol", None, ["model.arch=resnet10t"]))
    assert _grey_p(default.train_transform()) == [0.2, 0.2]  # lightly's BYOL value
    cfg = load_config(BYOLConfig, "byol", None, ["model.arch=resnet10t",
                                                 "byol.random_gray_scale=0.02",
                                                 "byol.solarization_prob=0.3"])
    tr = BYOL(cfg).train_transform()
    assert _grey_p(tr) == [0.02, 0.02]
    solar = [float(s.prob) for v in tr.transforms for s in v.transform.transforms
             if type(s).__name__ == "RandomSolarization"]
    assert solar == [0.0, 0.3]  # view 2 only (the paper's asymmetric views)


#: steps of the demo recipe in the slow check (of its 540; about 55 s on 2 cores)
RECIPE_CHECK_STEPS = 300


@pytest.mark.slow
def test_demo_recipe_beats_raw_pixels_on_val(tmp_path):
    """configs/demo.yaml, seed 0, on the demo's toy faces: gallery split/train, queries
    split/val (never split/test). A change that breaks the recipe (augmentations, lr, the fast
    path, the exported network) drops it to random init's level (0.15) and fails here."""
    from backbone_ssl.data.toy import write_toy_faces
    from backbone_ssl.evaluation.pixels import pixels_like
    from backbone_ssl.evaluation.report import run_eval
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.train import pretrain

    data = tmp_path / "toy_faces"
    write_toy_faces(data, identities=50, per_identity=40, size=64, seed=0)
    train, val = data / "split" / "train", data / "split" / "val"
    from omegaconf import OmegaConf

    method = str(OmegaConf.load(default_config_file("demo")).method)
    res = pretrain(method, config_file=str(default_config_file("demo")), data=str(train),
                   out=str(tmp_path / "run"),
                   overrides=[f"trainer.max_steps={RECIPE_CHECK_STEPS}", "data.num_workers=0",
                              "trainer.enable_progress_bar=false",
                              "trainer.checkpoint_every_n_steps=1000"])
    assert res.steps == RECIPE_CHECK_STEPS
    encoder = resolve_encoder(str(res.encoder_dir))
    report = run_eval(encoder, train, val, tmp_path / "eval", pixels=pixels_like(encoder),
                      baseline=resolve_encoder(f"random:{encoder.arch}",
                                               input_size=encoder.input_size))
    enc, pix = report["knn"]["top1"], report["pixels"]["knn"]["top1"]
    rand = report["baseline"]["knn"]["top1"]
    # written at 0.574 vs pixels 0.504 and random 0.150 (seed 0, 2 CPU cores); lr 1e-5 (a
    # broken recipe) gave 0.210 and failed here
    assert enc > pix, (enc, pix)
    assert enc > rand + 0.3, (enc, rand)
