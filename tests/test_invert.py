"""In-domain inversion: domain regulariser, bad input, tiny end-to-end runs; StyleGAN resume."""

import json

import pytest
import torch

from backbone_ssl.config import to_yaml
from backbone_ssl.errors import UserError
from backbone_ssl.export import resolve_encoder
from downstream import run_downstream
from downstream.encoder import EncoderInput
from downstream.invert import LatentEncoder, box_mask, domain_gap, optimise_latents
from downstream.stylegan import StyleGAN, StyleGenerator
from downstream.stylegan_config import StyleGANConfig
from tests.conftest import draw_identity_folder

TINY = ["model.channels=8", "model.z_dim=8", "model.w_dim=8", "model.mapping_layers=1"]


def _feats(size: int) -> EncoderInput:
    return EncoderInput(resolve_encoder("random:resnet10t", input_size=size, seed=0))


def test_domain_regulariser_lowers_gap():
    torch.manual_seed(0)
    g = StyleGenerator(16, z_dim=8, w_dim=8, mapping_layers=1, channels=8).eval()
    feats = _feats(16)
    enc = LatentEncoder(_feats(16), g.num_ws, g.w_dim, g.w_avg).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w0 = enc(x).detach() + torch.randn(2, g.num_ws, 8)
    free = optimise_latents(g, enc, feats, x, w0, steps=15, lr=0.05, lam=0.0)
    reg = optimise_latents(g, enc, feats, x, w0, steps=15, lr=0.05, lam=10.0)
    assert domain_gap(g, enc, reg) < 0.8 * domain_gap(g, enc, free)


def test_mask_covering_whole_image_is_refused():
    with pytest.raises(UserError, match="whole"):
        box_mask(16, 1.0)
    assert box_mask(16, 0.5).sum() == 64


def _tiny_generator_run(tmp_path, size=16):
    cfg = StyleGANConfig()
    cfg.data.image_size = size
    cfg.model.channels, cfg.model.z_dim, cfg.model.w_dim, cfg.model.mapping_layers = 8, 8, 8, 1
    run = tmp_path / "gen"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"state_dict": StyleGAN(cfg).state_dict()}, run / "checkpoints" / "last.ckpt")
    return run


def test_invert_bad_inputs(tmp_path):
    faces = draw_identity_folder(tmp_path / "faces", identities=2, per_identity=4, size=16)
    other = tmp_path / "gan_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text("task: gan\n")
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="not a stylegan"):
        run_downstream("invert", encoder="random:resnet10t", data=str(faces),
                       out=str(tmp_path / "o1"), overrides=[f"generator={other}"])
    gen = _tiny_generator_run(tmp_path)
    with pytest.raises(UserError, match="whole"):
        run_downstream("invert", encoder="random:resnet10t", data=str(faces),
                       out=str(tmp_path / "o2"),
                       overrides=[f"generator={gen}", "mask.kind=box", "mask.box_fraction=1.0"])


@pytest.mark.slow
def test_invert_end_to_end_optimised_beats_e_only(tmp_path):
    faces = draw_identity_folder(tmp_path / "faces", identities=2, per_identity=6, size=16)
    gen = _tiny_generator_run(tmp_path)
    rep = run_downstream("invert", encoder="random:resnet10t", data=str(faces),
                         out=str(tmp_path / "inv"),
                         overrides=[f"generator={gen}", "trainer.max_steps=3", "data.batch_size=4",
                                    "optimise.steps=25", "optimise.lr=0.05",
                                    "data.eval_images=4"])
    m = json.loads((tmp_path / "inv" / "report.json").read_text())["metrics"]
    assert m == rep["metrics"]
    assert m["optimised_psnr"] > m["e_only_psnr"]
    assert m["optimised_perceptual"] < m["e_only_perceptual"]
    assert (tmp_path / "inv" / "plots" / "reconstructions.png").stat().st_size > 0


@pytest.mark.slow
def test_stylegan_run_resume_and_ema(tmp_path):
    faces = draw_identity_folder(tmp_path / "faces", identities=2, per_identity=6, size=16)
    out = tmp_path / "sg"
    common = TINY + ["data.image_size=16", "data.batch_size=4", "metrics.max_eval=8",
                     "metrics.kid_subset_size=4", "trainer.enable_progress_bar=false"]
    rep = run_downstream("stylegan", encoder="random:resnet10t", data=str(faces), out=str(out),
                         overrides=common + ["trainer.max_steps=2"])
    assert rep["budget"]["steps"] == 2 and rep["metrics"]["kid"] is not None
    assert rep["metrics"]["fd"] > 0
    for p in ("samples.png", "truncation.png", "style_mixing.png"):
        assert (out / "plots" / p).is_file()
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    diff = sum((state[k] - state["generator_ema." + k[len("generator."):]]).abs().sum()
               for k in state if k.startswith("generator.") and "w_avg" not in k)
    assert diff > 0  # the EMA copy is not G
    with pytest.raises(UserError, match="resume"):
        run_downstream("stylegan", encoder="random:resnet10t", data=str(faces), out=str(out),
                       overrides=common + ["trainer.max_steps=2"])
    rep = run_downstream("stylegan", encoder="random:resnet10t", data=str(faces), out=str(out),
                         overrides=common + ["trainer.max_steps=4", "trainer.resume=true"])
    assert rep["budget"]["steps"] == 4  # continued from 2, not restarted
