"""Siamese identity head: splits, pairs, bad input, and an end-to-end run on tiny data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import draw_identity_folder

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.errors import UserError
from backbone_ssl.export import export_encoder
from downstream import run_downstream
from downstream.siamese import contrastive_loss, sample_pairs, split_train_val_test

FAST = ["trainer.max_steps=4", "trainer.enable_progress_bar=false", "data.image_size=32",
        "data.batch_size=8", "data.train_pairs=64", "data.eval_pairs=40",
        "model.hidden_dim=32", "model.embed_dim=16", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "trainer.save_checkpoint=false", "trainer.log_every_n_steps=1"]
LABELS = np.repeat(np.arange(8), 5)  # 8 identities x 5 images


def test_identity_split_is_disjoint_by_identity():
    s = split_train_val_test(LABELS, "identity", 0.25, 0.25, seed=0)
    ids = {k: set(LABELS[v]) for k, v in s.items()}
    assert all(len(v) >= 2 for v in ids.values())
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert sorted(np.concatenate(list(s.values()))) == list(range(len(LABELS)))


def test_image_split_shares_identities_not_images():
    s = split_train_val_test(LABELS, "image", 0.2, 0.2, seed=0)
    idx = {k: set(v.tolist()) for k, v in s.items()}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"])
    assert not (idx["val"] & idx["test"])
    assert set(LABELS[s["test"]]) == set(LABELS[s["train"]]) == set(range(8))


def test_pairs_never_repeat_an_image_and_labels_are_right():
    indices = np.arange(len(LABELS))
    pairs = sample_pairs(LABELS, indices, 500, 0.5, seed=0, what="train")
    assert pairs.shape == (500, 3) and pairs[:, 2].sum() == 250
    assert (pairs[:, 0] != pairs[:, 1]).all()
    same_label = LABELS[pairs[:, 0]] == LABELS[pairs[:, 1]]
    assert (same_label == pairs[:, 2].astype(bool)).all()
    sub = np.arange(10)  # identities 0 and 1 only
    assert set(sample_pairs(LABELS, sub, 50, 0.5, 1, "val")[:, :2].ravel()) <= set(sub)


def test_one_identity_is_refused():
    with pytest.raises(UserError, match="at least 2 identities"):
        split_train_val_test(np.zeros(6, dtype=int), "image", 0.2, 0.2, 0)
    with pytest.raises(UserError, match="needs at least 6 identities"):
        split_train_val_test(np.repeat(np.arange(3), 4), "identity", 0.2, 0.2, 0)


def test_contrastive_loss_values():
    d = torch.tensor([0.0, 0.5, 2.0, 0.3])
    same = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # same: d^2 -> 0, 0.25; different: relu(1 - d)^2 -> 0, 0.49
    assert contrastive_loss(d, same, 1.0).item() == pytest.approx((0.25 + 0.49) / 4)


def test_cli_one_identity_folder_exit_2(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "one", identities=1, per_identity=6)
    code = main(["downstream", "siamese", "--encoder", "random:resnet10t", "--data", str(root),
                 "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "at least 2 identities" in err[0]


def test_encoder_input_size_mismatch_exit_2(tmp_path, capsys):
    root = draw_identity_folder(tmp_path / "ids", identities=8, per_identity=5)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=48)
    code = main(["downstream", "siamese", "--encoder", str(enc), "--data", str(root),
                 "--out", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "takes 48x48 input" in err[0] and "data.resize_to_encoder=true" in err[0]


@pytest.fixture(scope="module")
def ids_root(tmp_path_factory):
    return draw_identity_folder(tmp_path_factory.mktemp("sia") / "ids", identities=8,
                                per_identity=8)


def _check_report(out, spec: str) -> dict:
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    for key in ("accuracy", "roc_auc", "threshold", "val_accuracy", "raw_accuracy",
                "raw_roc_auc"):
        assert math.isfinite(m[key]), key
    # the 8 identities are 8 distinct shape+colour pairs, near-identical within an identity: the
    # frozen features, and the head on them, must verify the unseen test identities' pairs far
    # above chance (0.5), at the threshold chosen on the validation pairs
    assert m["raw_roc_auc"] > 0.85 and m["roc_auc"] > 0.85, m
    assert m["raw_accuracy"] >= 0.75 and m["accuracy"] >= 0.75, m
    assert report["encoder"]["spec"] == spec and report["budget"]["steps"] == 4
    assert report["data"]["test_identities"] == 2 and report["data"]["train_identities"] == 4
    assert (out / "report.md").read_text().startswith("# Siamese")
    assert (out / "plots" / "verification.png").is_file() and (out / "metrics.csv").is_file()
    return report


def test_end_to_end_random_and_exported(ids_root, tmp_path):
    r1 = _check_report_run(ids_root, tmp_path / "r", "random:resnet10t")
    torch.manual_seed(1)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=32, meta={"method": "dino", "steps": 1})
    r2 = _check_report_run(ids_root, tmp_path / "e", str(enc))
    assert r2["encoder"]["method"] == "dino" and r1["encoder"]["method"] == "random"
    # same data, split and pairs for both encoders: only the encoder differs
    assert r1["data"] == r2["data"]


def _check_report_run(root, out, spec: str) -> dict:
    report = run_downstream("siamese", encoder=spec, data=str(root), out=str(out),
                            overrides=FAST)
    assert _check_report(out, spec) == report
    return report


def test_resize_to_encoder_and_image_split(ids_root, tmp_path):
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=48)
    report = run_downstream("siamese", encoder=str(enc), data=str(ids_root),
                            out=str(tmp_path / "r"),
                            overrides=[*FAST, "data.resize_to_encoder=true", "data.split=image"])
    assert report["encoder"]["input_size"] == 48
    assert report["data"]["split"] == "image" and report["data"]["test_identities"] == 8
