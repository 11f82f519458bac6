"""The CPU recipes of issue 13 (configs/demo.yaml, simclr_cpu.yaml, dino_cpu.yaml, byol_cpu.yaml).

The slow test trains the demo recipe at a small budget on tiny toy faces and checks that its
encoder beats raw pixels on a held-out val split (benchmarks/RECIPES.md has the full study).
"""

from __future__ import annotations

from pathlib import Path

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


def test_dino_colour_keys_default_to_lightly_and_reach_the_transform():
    default = DINO(load_config(DINOConfig, "dino", None, ["model.arch=resnet10t"]))
    assert _grey_p(default.train_transform()) == [0.2] * 4  # 2 global + 2 local (dino.yaml)
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


def knn_top1(encoder, gallery: Path, queries: Path) -> float:
    """Cosine kNN top-1 (k 20, t 0.07, the eval defaults) of ``queries`` against ``gallery``."""
    from backbone_ssl.evaluation.features import embed_folder
    from backbone_ssl.evaluation.knn import knn_neighbours, knn_scores

    g, gl, _, classes, _ = embed_folder(encoder, gallery)
    q, ql, _, _, _ = embed_folder(encoder, queries)
    sims, idx = knn_neighbours(g, q, 20)
    return knn_scores(sims, idx, gl, ql, 20, 0.07, len(classes))["top1"]


@pytest.mark.slow
def test_demo_recipe_beats_raw_pixels_on_val(tmp_path):
    """The demo recipe (its own method and config), cut to 100 steps of 32 on 12 x 24 toy
    faces, beats raw pixels on split/val (the study's criterion: choose on val)."""
    from omegaconf import OmegaConf

    from backbone_ssl.data.toy import write_toy_faces
    from backbone_ssl.export import resolve_encoder
    from backbone_ssl.train import pretrain

    faces = write_toy_faces(tmp_path / "faces", identities=12, per_identity=24, size=32, seed=3)
    train = Path(faces["paths"]["split_train"])
    val = train.parent / "val"
    cfg_file = default_config_file("demo")
    res = pretrain(str(OmegaConf.load(cfg_file).method), config_file=str(cfg_file),
                   data=str(train), out=str(tmp_path / "run"),
                   overrides=["trainer.max_steps=100", "trainer.max_epochs=-1",
                              "data.batch_size=32", "data.num_workers=0",
                              "trainer.enable_progress_bar=false", "seed=0"])
    encoder = resolve_encoder(str(res.encoder_dir))
    ssl = knn_top1(encoder, train, val)
    pixels = knn_top1(resolve_encoder("pixels", input_size=encoder.input_size), train, val)
    assert ssl >= pixels + 0.05, (ssl, pixels)
