"""Person / no-person pretraining: balanced draws, metrics, one-class data, end to end."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset

from backbone_ssl import load_encoder
from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.methods.person import ClassBalanced, Person, PersonConfig

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "data.image_size=32",
        "data.batch_size=8", "trainer.log_every_n_steps=1"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture()
def tiny_prep(tmp_path):
    """A `golden prepare` output of 6 toy books: 1 held-out book, both classes on each side."""
    from backbone_ssl.data.golden import prepare
    from backbone_ssl.data.toy_comics import write_toy_comics

    comics = tmp_path / "comics"
    write_toy_comics(comics, books=6, pages=2, seed=0)
    prep = tmp_path / "prep"
    prepare(comics / "raw_panel_images", comics / "face_annotations", prep)
    return prep


class _Labelled(Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return i, self.labels[i]


def test_class_balanced_draws_both_classes_equally_often():
    labels = [0] * 3 + [1] * 97
    data = ClassBalanced(_Labelled(labels), labels)
    assert len(data) == 100
    torch.manual_seed(0)
    drawn = [data[i] for i in range(2000)]
    share = np.mean([y for _, y in drawn])
    assert 0.45 < share < 0.55  # a plain shuffle would give 0.97
    assert {i for i, y in drawn if y == 0} == {0, 1, 2}  # every minority panel is used
    torch.manual_seed(0)
    assert [data[i] for i in range(50)] == drawn[:50]  # same seed, same draws


def test_held_out_metrics_by_hand():
    cfg = load_config(PersonConfig, "person", overrides=["model.arch=resnet10t"])
    model = Person(cfg)
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = model.held_out_metrics(labels, probs)
    assert m["val/acc"] == pytest.approx(3 / 5)
    assert m["val/balanced_acc"] == pytest.approx(0.5 * (1 / 2 + 2 / 3))
    assert m["val/roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (pos, neg) pairs ranked right
    expected = -np.mean(np.log([0.9, 0.4, 0.4, 0.8, 0.9]))
    assert m["val/loss"] == pytest.approx(expected)


@pytest.mark.slow
def test_person_end_to_end_exports_the_encoder_without_its_head(tiny_prep, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "person", "--data", str(tiny_prep), "--out", str(run),
                 "trainer.max_steps=3", *FAST]) == 0  # default arch: tf_efficientnet_b0
    for rel in ("metrics.csv", "checkpoints/last.ckpt", "plots/confusion.png", "plots/loss.png",
                "encoder/model.safetensors"):
        assert (run / rel).is_file(), rel
    metrics = rows(run / "metrics.csv")
    losses = [float(r["train/loss"]) for r in metrics if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    # the checkpoint holds the classifier; the export does not
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert "classifier.weight" in ckpt["state_dict"]
    # the last logged held-out metrics are those of the final weights on the held-out books:
    # predict them again from the checkpoint and score them independently (scikit-learn)
    cfg = load_config(PersonConfig, "person", overrides=FAST, data__path=str(tiny_prep))
    model = Person(cfg)
    model.load_state_dict(ckpt["state_dict"])
    labels, probs = model.predict_held_out()
    assert set(labels.tolist()) == {0, 1} and len(labels) == len(model.val_set)
    last = [r for r in metrics if r.get("val/roc_auc")][-1]
    assert float(last["val/roc_auc"]) == pytest.approx(roc_auc_score(labels, probs), abs=1e-5)
    assert float(last["val/acc"]) == pytest.approx(((probs >= 0.5) == labels).mean(), abs=1e-5)
    bundle = load_encoder_bundle(run / "encoder")
    assert bundle.arch == "tf_efficientnet_b0" and bundle.meta["method"] == "person"
    keys = set(bundle.module.state_dict())
    assert not any(k.startswith("classifier.") for k in keys)
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("backbone.")}
    assert keys == set(state)
    for k, v in bundle.module.state_dict().items():
        torch.testing.assert_close(v, state[k])
    enc = load_encoder(str(run / "encoder"))
    assert enc(torch.zeros(2, 3, 32, 32)).shape == (2, 1280)


def _rewrite_labels(prep, fn):
    path = prep / "person_labels.csv"
    with open(path, newline="") as f:
        data = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["panel", "has_person"])
        w.writeheader()
        for r in data:
            w.writerow({"panel": r["panel"], "has_person": fn(r)})


def test_one_class_panels_exit_2_with_one_line(tiny_prep, tmp_path, capsys):
    _rewrite_labels(tiny_prep, lambda r: 1)
    assert main(["pretrain", "person", "--data", str(tiny_prep), "--out", str(tmp_path / "r"),
                 "model.arch=resnet10t", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only 'person' panels" in err[0] and "training books" in err[0], err


def test_held_out_books_with_one_class_exit_2(tiny_prep, tmp_path, capsys):
    # the held-out book (seed 0) is book 3: make all its panels "person"
    _rewrite_labels(tiny_prep, lambda r: 1 if r["panel"].startswith("3/") else r["has_person"])
    assert main(["pretrain", "person", "--data", str(tiny_prep), "--out", str(tmp_path / "r"),
                 "model.arch=resnet10t", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held-out books" in err[0], err


def test_person_without_a_prepare_output_is_a_user_error(tiny_split, tmp_path, capsys):
    train, _ = tiny_split
    assert main(["pretrain", "person", "--data", str(train), "--out", str(tmp_path / "r"),
                 "model.arch=resnet10t", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "golden prepare" in err[0], err
