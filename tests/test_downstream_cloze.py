"""Face cloze: pasting, the sequence encoder, bad input and end-to-end runs on toy comics."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.data.golden import prepare
from backbone_ssl.data.toy_comics import write_toy_comics
from backbone_ssl.errors import UserError
from backbone_ssl.export import export_encoder, resolve_encoder
from downstream import run_downstream
from downstream.cloze import load_sequences, paste_faces
from downstream.config import ClozeConfig
from downstream.encoder import EncoderInput
from downstream.metrics import image_quality
from downstream.sequence import PanelSequenceEncoder, kl_divergence

FAST = ["data.panel_size=32", "data.face_size=32", "data.batch_size=4", "model.embed_dim=16",
        "model.hidden_dim=16", "model.latent_dim=8", "model.gen_channels=8",
        "model.disc_channels=8", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "trainer.save_checkpoint=false", "metrics.max_eval=8",
        "metrics.ref_encoder=random:resnet10t", "metrics.grid_rows=2"]


def test_paste_faces_places_each_face_in_its_box():
    panels = torch.zeros(2, 3, 16, 16)
    faces = torch.ones(2, 3, 8, 8, requires_grad=True)
    boxes = torch.tensor([[2, 3, 6, 9], [0, 0, 16, 16]])
    out = paste_faces(panels, faces, boxes)
    assert out[0, :, 3:9, 2:6].eq(1).all() and out[0].sum() == 3 * 6 * 4
    assert out[1].eq(1).all()
    out.sum().backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    assert panels.eq(0).all()  # the input panels are not modified


@pytest.mark.parametrize("mode", ["concat", "lstm", "bilstm"])
def test_sequence_encoder_modes(mode):
    enc = resolve_encoder("random:resnet10t", input_size=32)
    seq = PanelSequenceEncoder(EncoderInput(enc), enc.num_features, n_panels=3, mode=mode,
                               embed_dim=16, hidden_dim=12, latent_dim=6, vae=True)
    panels = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    mu, logvar = seq(panels)
    assert mu.shape == logvar.shape == (2, 6)
    (mu.sum() + kl_divergence(mu, logvar)).backward()
    assert all(p.grad is None for p in seq.embedder.parameters())  # frozen embedder
    assert seq.project[0].weight.grad is not None
    with torch.no_grad():  # the order of the panels matters to every mode
        assert not torch.allclose(seq(panels.flip(1))[0], mu)


def test_kl_is_zero_at_the_prior():
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    assert kl_divergence(torch.ones(3, 4), torch.zeros(3, 4)).item() == pytest.approx(2.0)


def _prep(root, books: int, pages: int):
    comics = root / "comics"
    write_toy_comics(comics, books=books, pages=pages, seed=0)
    prepare(comics / "raw_panel_images", comics / "face_annotations", root / "prep", min_face=16)
    return root / "prep", comics


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return _prep(tmp_path_factory.mktemp("cloze"), books=3, pages=2)[0]


def _run(prep, out, spec, extra=()):
    report = run_downstream("cloze", encoder=spec, data=str(prep), out=str(out),
                            overrides=[*FAST, *extra])
    assert json.loads((out / "report.json").read_text()) == report
    m = report["metrics"]
    for key in ("psnr", "ssim", "l1", "kid", "fd"):
        assert math.isfinite(m[key]), key
    assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and 0 <= m["l1"] <= 2
    assert m["fd"] >= 0 and m["fd_dim"] == 7 and m["eval_sequences"] == 8
    assert report["budget"]["steps"] == 3
    assert report["data"]["test_books"] == 1 and report["data"]["train_books"] == 2
    assert (out / "plots" / "samples.png").is_file() and (out / "metrics.csv").is_file()
    assert "not Inception KID/FID" in (out / "report.md").read_text()
    return report


def _twin_book_prep(root):
    """A prepare output of two identical books (book 1 is a copy of book 0): whichever is held
    out, the held-out faces are the training faces."""
    comics = root / "comics"
    write_toy_comics(comics, books=1, pages=2, seed=0)
    shutil.copytree(comics / "raw_panel_images" / "0", comics / "raw_panel_images" / "1")
    boxes = (comics / "face_annotations" / "0.txt").read_text()
    (comics / "face_annotations" / "1.txt").write_text(boxes.replace("0/", "1/"))
    prepare(comics / "raw_panel_images", comics / "face_annotations", root / "prep", min_face=16)
    return root / "prep"


def test_end_to_end_random_encoder_learns_the_faces_of_a_seen_book(tmp_path):
    """L1 training on a book, evaluation on its copy: the model must reproduce the faces it saw
    far better than a blank (all-zero) face does; a generator that does not train, or an
    evaluation that compares with the wrong faces, stays near the blank face."""
    prep = _twin_book_prep(tmp_path)
    out = tmp_path / "r"
    report = run_downstream("cloze", encoder="random:resnet10t", data=str(prep), out=str(out),
                            overrides=[*FAST, "trainer.max_steps=100", "optim.lr=0.003",
                                       "loss.local_weight=0", "loss.global_weight=0",
                                       "model.vae=false"])
    assert json.loads((out / "report.json").read_text()) == report
    assert report["encoder"]["method"] == "random" and report["model"]["sequence"] == "lstm"
    assert report["budget"]["steps"] == 100 and report["data"]["test_books"] == 1
    cfg = load_config(ClozeConfig, "cloze", None, FAST, data__path=str(prep))
    test = load_sequences(cfg, "test")
    faces = torch.stack([test[i]["face"] for i in range(report["metrics"]["eval_sequences"])])
    blank = image_quality(torch.zeros_like(faces), faces)
    m = report["metrics"]
    assert m["l1"] < 0.6 * blank["l1"], (m, blank)
    assert m["psnr"] > blank["psnr"] + 3 and m["ssim"] > blank["ssim"] + 0.2, (m, blank)


def test_end_to_end_exported_encoder_resized_bilstm_wgan(prep, tmp_path):
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=48, meta={"method": "dino", "steps": 1})
    r = _run(prep, tmp_path / "e", str(enc),
             ["data.resize_to_encoder=true", "model.sequence=bilstm", "model.vae=false",
              "loss.gan=wgan-gp"])
    assert r["encoder"]["method"] == "dino" and r["encoder"]["input_size"] == 48
    assert r["model"] == {"sequence": "bilstm", "vae": False, "loss": "wgan-gp",
                          "decoder": "dcgan", "face_latent": "none"}


def test_encoder_size_mismatch_exit_2(prep, tmp_path, capsys):
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=48)
    code = main(["downstream", "cloze", "--encoder", str(enc), "--data", str(prep),
                 "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "takes 48x48 input" in err[0] and "data.panel_size=48" in err[0]


def test_missing_panel_exit_2(tmp_path, capsys):
    prep_out, comics = _prep(tmp_path, books=2, pages=1)
    seqs = json.loads((prep_out / "sequences.json").read_text())
    first_panel = next(iter(seqs.values()))[0][0]
    (comics / "raw_panel_images" / first_panel).unlink()
    code = main(["downstream", "cloze", "--encoder", "random:resnet10t", "--data",
                 str(prep_out), "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "missing" in err[0] and "data.skip_missing_panels=true" in err[0]
    cfg = load_config(ClozeConfig, "cloze", None, [*FAST, "data.skip_missing_panels=true"],
                      data__path=str(prep_out))
    kept = sum(len(load_sequences(cfg, s)) for s in ("train", "test"))
    assert 0 < kept < len(seqs)
    shutil.rmtree(comics / "raw_panel_images")
    with pytest.raises(UserError, match="raw panels folder .* not found"):
        load_sequences(cfg, "train")
