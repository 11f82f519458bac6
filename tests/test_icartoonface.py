"""iCartoonFace reader and the rank-1 protocol.

Covers data/icartoonface.py and evaluation/icartoonface.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from backbone_ssl.cli import main
from backbone_ssl.data.icartoonface import TEST_SUBDIR, TestImages, read_test, train_dataset
from backbone_ssl.data.toy import write_toy_faces
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.icartoonface import icartoonface_rank1, rank1_hits
from backbone_ssl.export import Encoder, freeze

FAST_TRAIN = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
              "data.image_size=32", "data.batch_size=8"]


def test_rank1_hand_made_features():
    # rows: 0 probe A, 1 mate A, 2 probe B, 3 mate B, 4-5 distractors
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.4], [0.1, 1.0], [-1.0, 0.0]])
    hits = rank1_hits(feats, [(0, 1), (2, 3)], [4, 5])
    assert hits.tolist() == [True, False]  # B's mate is beaten by distractor 4
    assert rank1_hits(feats, [(0, 1), (2, 3)], []).tolist() == [True, True]
    assert rank1_hits(feats, [(2, 3)], [5]).tolist() == [True]
    # a tie with a distractor is a miss; a distractor probe does not beat itself
    tie = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert rank1_hits(tie, [(0, 1)], [2]).tolist() == [False]
    assert rank1_hits(feats, [(4, 2)], [4, 5]).tolist() == [True]


class _MeanColour(nn.Module):
    """``[B,3,H,W] -> [B,3]``: the mean colour, so cosine similarities can be worked by hand."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def test_rank1_protocol_end_to_end_known_answer(tmp_path):
    """Reader -> crops -> embedding -> protocol on a hand-made layout whose answer is worked out
    by hand from mean colours: probe/mate A (red) and C (blue) score; B's mate (a duller green)
    is beaten by distractor D1, whose box is a purer green. D1 is yellow outside its box: an
    uncropped D1 would lose to B's mate (rank-1 1.0), so the 2/3 also needs the crops."""
    test = tmp_path / TEST_SUBDIR
    test.mkdir(parents=True)
    box = (10, 10, 30, 30)
    images = {  # name: (box colour, outside colour, label)
        "pa.png": ((200, 30, 30), (0, 0, 0), 1), "ma.png": ((190, 40, 40), (0, 0, 0), 1),
        "pb.png": ((30, 200, 30), (0, 0, 0), 2), "mb.png": ((60, 160, 90), (0, 0, 0), 2),
        "pc.png": ((30, 30, 200), (0, 0, 0), 3), "mc.png": ((40, 40, 180), (0, 0, 0), 3),
        "d1.png": ((40, 190, 50), (230, 200, 30), -1),
    }
    rows = []
    for name, (inside, outside, label) in images.items():
        im = Image.new("RGB", (40, 40), outside)
        im.paste(inside, box)
        im.save(test / name)
        rows.append(f"{name} {' '.join(map(str, box))} {label}")
    Image.new("RGB", (40, 40), (255, 255, 255)).save(test / "d2.png")  # white, whole image
    rows += ["d2.png -1 -1 -1 -1 -1", "pa.png ma.png", "pb.png mb.png", "pc.png mc.png"]
    (test.parent / "icartoonface_rectest_info.txt").write_text("\n".join(rows) + "\n")
    enc = Encoder(module=freeze(_MeanColour()), arch="mean-colour", input_size=8,
                  mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    result = icartoonface_rank1(enc, tmp_path, batch_size=3)
    assert result == {"rank1": pytest.approx(2 / 3), "probes": 3, "images": 8, "distractors": 2}


def _write_layout(root: Path, info_at_inner: bool) -> None:
    test = root / TEST_SUBDIR
    test.mkdir(parents=True)
    colours = {"a.jpg": (200, 30, 30), "b.jpg": (30, 200, 30), "c.jpg": (30, 30, 200)}
    for name, colour in colours.items():
        im = Image.new("RGB", (40, 30), (255, 255, 255))
        im.paste(colour, (5, 5, 25, 25))
        im.save(test / name)
    (test / "broken.jpg").write_bytes(b"not a jpeg")
    rows = [
        "a.jpg 5 5 25 25 7", "b.jpg 5 5 25 25 7", "c.jpg -1 -1 -1 -1 -1",
        "d.jpg 1 2 3", "e.jpg 1 2 x 4 -1", "a.jpg 0 0 10 10 7", "gone.jpg 0 0 5 5 -1",
        "a.jpg b.jpg", "a.jpg nope.jpg",
    ]
    info = (test if info_at_inner else test.parent) / "icartoonface_rectest_info.txt"
    info.write_text("\n".join(rows) + "\n")
    (root / "personai_icartoonface_rectrain/icartoonface_rectrain/id_1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(
        root / "personai_icartoonface_rectrain/icartoonface_rectrain/id_1/x.jpg")


@pytest.mark.parametrize("info_at_inner", [False, True])
def test_reader_parses_crops_and_counts(tmp_path, info_at_inner):
    _write_layout(tmp_path, info_at_inner)
    test = read_test(tmp_path)
    assert [im.name for im in test.images] == ["a.jpg", "b.jpg", "c.jpg"]
    assert test.images[0].box == (5, 5, 25, 25) and test.images[2].box is None
    assert test.labels == [7, 7, -1] and test.distractors == [2]
    assert test.pairs == [(0, 1)]
    assert dict(test.skipped) == {"bad_field_count": 1, "not_numeric": 1, "duplicate_image": 1,
                                  "missing_image": 1, "bad_pair": 1}
    ds = TestImages(test)
    crop, label = ds[0]
    assert crop.size == (20, 20) and label == 7
    assert np.asarray(crop)[10, 10].tolist() == pytest.approx([200, 30, 30], abs=12)
    assert ds.load(2).size == (40, 30)  # no box: whole image
    assert len(train_dataset(tmp_path)) == 1
    with pytest.raises(UserError, match="info file not found"):
        read_test(tmp_path / "nowhere")


@pytest.mark.slow
def test_eval_cli_on_toy_faces_random_and_pretrained(tmp_path):
    root = tmp_path / "faces"
    info = write_toy_faces(root, identities=6, per_identity=4, size=32, test_identities=4,
                           distractors=8)
    out = tmp_path / "eval"
    assert main(["eval", "--encoder", "random:resnet10t", "--icartoonface", str(root),
                 "--out", str(out), "--baseline"]) == 0
    report = json.loads((out / "report.json").read_text())
    icf = report["icartoonface"]
    pairs = sum(1 for ln in (root / "personai_icartoonface_rectest/icartoonface_rectest_info.txt")
                .read_text().splitlines() if len(ln.split()) == 2)
    assert 0.0 <= icf["rank1"] <= 1.0 and icf["probes"] == pairs > 0
    assert icf["distractors"] == 8 and icf["images"] == info["test_probe_images"] + 8
    assert report["encoder"]["arch"] == "resnet10t"
    assert 0.0 <= report["baseline"]["icartoonface"]["rank1"] <= 1.0
    pix = report["pixels"]
    # raw pixels at the encoder's own input size (random:<arch> defaults to 64 px)
    assert pix["size"] == report["encoder"]["input_size"] == 64
    assert pix["icartoonface"]["probes"] == icf["probes"]
    assert "iCartoonFace" in (out / "report.md").read_text()
    assert "raw pixels 64 px" in (out / "report.md").read_text()

    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--data", str(root), "--out", str(run),
                 "trainer.max_steps=2", *FAST_TRAIN]) == 0
    out2 = tmp_path / "eval2"
    assert main(["eval", "--encoder", str(run / "encoder"), "--icartoonface", str(root),
                 "--out", str(out2)]) == 0
    report2 = json.loads((out2 / "report.json").read_text())
    assert 0.0 <= report2["icartoonface"]["rank1"] <= 1.0
    assert report2["icartoonface"]["probes"] == pairs
    assert report2["encoder"]["method"] == "byol"
