"""The raw-pixel baseline encoder: flattening, spec parsing, preprocessing as the encoder's."""

from __future__ import annotations

import pytest
import torch

from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.pixels import parse_pixels_spec, pixels_like
from backbone_ssl.export import random_encoder, resolve_encoder


def test_pixels_flatten_the_normalised_image():
    enc = resolve_encoder("pixels:8")
    x = torch.randn(2, 3, 8, 8)
    out = enc.module(x)
    assert out.shape == (2, 192) and enc.num_features == 192
    torch.testing.assert_close(out[1].reshape(3, 8, 8), x[1])
    assert enc.name == "pixels" and enc.input_size == 8


def test_pixels_spec_sizes_and_errors():
    assert parse_pixels_spec("pixels", 24) == 24
    assert parse_pixels_spec("pixels:16") == 16
    assert parse_pixels_spec("random:resnet18") is None
    assert parse_pixels_spec("pixelsfoo") is None
    with pytest.raises(UserError, match="integer"):
        parse_pixels_spec("pixels:big")
    with pytest.raises(UserError, match=r"\[4, 512\]"):
        parse_pixels_spec("pixels:2")


def test_pixels_like_takes_the_encoders_size_and_normalisation():
    enc = random_encoder("resnet10t", 40, 0)
    px = pixels_like(enc)
    assert (px.input_size, px.mean, px.std) == (40, enc.mean, enc.std)


def test_eval_baseline_reports_raw_pixels_beside_random_init(tiny_split, tmp_path):
    """`eval --baseline` adds a pixels block equal to evaluating `pixels:S` on its own."""
    import json

    from backbone_ssl.cli import main
    from backbone_ssl.evaluation.protocol import evaluate_encoder

    train, test = tiny_split
    out = tmp_path / "eval"
    assert main(["eval", "--encoder", "random:resnet10t", "--train", str(train), "--test",
                 str(test), "--out", str(out), "--baseline", "--k", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"knn", "linear", "baseline", "pixels"} <= set(report)
    pix = report["pixels"]
    assert set(pix) == {"size", "knn", "linear"} and pix["size"] == report["encoder"]["input_size"]
    alone = evaluate_encoder(resolve_encoder(f"pixels:{pix['size']}"), train, test, k=3)
    assert pix["knn"] == alone["knn"] and pix["linear"] == alone["linear"]
    # the drawn shapes are separable by colour: raw pixels get most queries right
    assert pix["knn"]["top1"] > 0.5
    md = (out / "report.md").read_text()
    assert f"| baseline: raw pixels {pix['size']} px | {100 * pix['knn']['top1']:.1f} |" in md
    assert len(list((out / "plots").glob("*_pixels.png"))) == 2
