"""Tests for backbone_ssl.evaluation: kNN, linear probe, class alignment, report, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw
from torch import nn

from backbone_ssl.errors import UserError
from backbone_ssl.evaluation import (
    align_by_name,
    embed_folder,
    evaluate_encoder,
    format_table,
    knn_classify,
    knn_search,
    l2_normalize,
    linear_probe,
    load_splits,
    merge_section,
    plot_embedding_2d,
    plot_retrieval_grid,
    run_eval,
)
from backbone_ssl.export import Encoder

SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: One colour and shape per identity.
IDENTITIES = {
    "alice": ((220, 30, 30), "ellipse"),
    "bob": ((30, 200, 30), "rectangle"),
    "carol": ((30, 30, 220), "triangle"),
    "dave": ((230, 210, 20), "cross"),
}


# --------------------------------------------------------------------------- helpers


def draw_face(colour: tuple[int, int, int], shape: str, rng: np.random.Generator) -> Image.Image:
    """A 32x32 RGB image: a jittered coloured shape on a grey background."""
    img = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(90, 140, 3)))
    d = ImageDraw.Draw(img)
    x0, y0 = rng.integers(2, 9, 2)
    x1, y1 = SIZE - rng.integers(2, 9, 2)
    box = (int(x0), int(y0), int(x1), int(y1))
    if shape == "ellipse":
        d.ellipse(box, fill=colour)
    elif shape == "rectangle":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour
        )
    else:
        d.rectangle((box[0], 13, box[2], 19), fill=colour)
        d.rectangle((13, box[1], 19, box[3]), fill=colour)
    return img


def make_folder(root: Path, names: list[str], per_identity: int, seed: int) -> Path:
    """``root/<name>/<i>.png`` for each identity in ``names``."""
    rng = np.random.default_rng(seed)
    for name in names:
        colour, shape = IDENTITIES.get(name, ((200, 200, 200), "ellipse"))
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_identity):
            draw_face(colour, shape, rng).save(root / name / f"{i:02d}.png")
    return root


class MeanColour(nn.Module):
    """A transparent encoder: the mean of each channel, ``[B,3,H,W] -> [B,3]``."""

    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def frozen(module: nn.Module, arch: str, meta: dict | None = None) -> Encoder:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return Encoder(module, arch, SIZE, MEAN, STD, meta or {})


def timm_encoder(arch: str = "resnet10t", seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    return frozen(model, arch, {"method": "random", "data": "none"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """Train (4 identities x 6) and test (4 identities x 3, different jitter) folders."""
    base = tmp_path_factory.mktemp("faces")
    train = make_folder(base / "train", list(IDENTITIES), 6, seed=1)
    test = make_folder(base / "test", list(IDENTITIES), 3, seed=2)
    return train, test


@pytest.fixture(scope="module")
def cnn() -> Encoder:
    return timm_encoder("resnet10t")


def unit(cos: float, sign: float = 1.0) -> list[float]:
    """A 2-D unit vector with cosine ``cos`` to ``[1, 0]``."""
    return [cos, sign * math.sqrt(1.0 - cos * cos)]


# --------------------------------------------------------------------------- kNN


def test_l2_normalize_and_search_are_cosine():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    n = l2_normalize(x)
    assert n.dtype == np.float32
    np.testing.assert_allclose(n[0], [0.6, 0.8], rtol=1e-6)
    assert np.all(np.isfinite(n))
    gallery = np.array([[10.0, 0.0], [0.0, 0.1], [-1.0, 0.0]])
    sims, idx = knn_search(gallery, np.array([[2.0, 1.9]]), k=10)  # k clipped to 3
    assert idx.shape == (1, 3) and idx[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(sims[0, 0], 2.0 / math.hypot(2.0, 1.9), rtol=1e-5)


def test_knn_separated_clusters_are_perfect():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 10
    train_y = np.repeat(np.arange(3), 10)
    test_y = np.repeat(np.arange(3), 4)
    train_x = centres[train_y] + rng.normal(0, 0.1, (30, 8))
    test_x = centres[test_y] + rng.normal(0, 0.1, (12, 8))
    out = knn_classify(train_x, train_y, test_x, test_y, k=5, t=0.07)
    assert out == {"k": 5, "t": 0.07, "top1": 1.0, "top5": 1.0, "nn1": 1.0}
    assert all(type(out[key]) is float for key in ("t", "top1", "top5", "nn1"))


def test_weighted_vote_beats_majority_and_temperature_matters():
    # One very close neighbour of class 0, two mediocre ones of class 1, one far of class 2.
    gallery = np.array([unit(0.99), unit(0.5), unit(0.5, -1), unit(-1.0)])
    gallery_y = np.array([0, 1, 1, 2])
    query, query_y = np.array([[1.0, 0.0]]), np.array([0])
    sharp = knn_classify(gallery, gallery_y, query, query_y, k=3, t=0.07)
    assert sharp["top1"] == 1.0  # exp(.99/.07) > 2 exp(.5/.07)
    flat = knn_classify(gallery, gallery_y, query, query_y, k=3, t=100.0)
    assert flat["top1"] == 0.0  # ~ majority vote: class 1 wins
    assert flat["top5"] == 1.0 and flat["nn1"] == 1.0  # 3 classes: top-5 clipped to all


def angle(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_nn1_top1_top5_by_hand():
    gallery = np.array([angle(a) for a in (0, 30, 60, 90, 180)])
    gallery_y = np.array([0, 1, 1, 2, 3])
    queries = np.array([angle(a) for a in (5, 20, 170, 80)])
    query_y = np.array([0, 0, 3, 1])
    # 1-NN: 5->0 (0 ok), 20->30 (1 wrong), 170->180 (3 ok), 80->90 (2 wrong)
    # k=2 votes: {0,1}->0 ok, {1,0}->1 wrong but second, {3,2}->3 ok, {2,1}->2 wrong but second
    out = knn_classify(gallery, gallery_y, queries, query_y, k=2, t=0.07, num_classes=4)
    assert out["nn1"] == 0.5 and out["top1"] == 0.5
    assert out["top5"] == 1.0  # 4 classes: top-5 clipped to 4, every true class got a vote
    # With k=1 the true class of queries 1 and 3 gets no vote: never a top-5 hit.
    out1 = knn_classify(gallery, gallery_y, queries, query_y, k=1, num_classes=4)
    assert out1 == {"k": 1, "t": 0.07, "top1": 0.5, "top5": 0.5, "nn1": 0.5}


def test_knn_k_clipped_to_gallery():
    out = knn_classify(np.eye(3), [0, 1, 2], np.eye(3), [0, 1, 2], k=20)
    assert out["k"] == 3 and out["top1"] == 1.0


# --------------------------------------------------------------------------- linear probe


def test_linear_probe_separable_and_deterministic():
    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(3), 15)
    test_y = np.repeat(np.arange(3), 5)
    centres = rng.normal(0, 5, (3, 16))
    train_x = centres[train_y] + rng.normal(0, 0.3, (45, 16))
    test_x = centres[test_y] + rng.normal(0, 0.3, (15, 16))
    a = linear_probe(train_x, train_y, test_x, test_y, seed=0)
    assert a == {"top1": 1.0}
    assert linear_probe(train_x, train_y, test_x, test_y, seed=0) == a


def test_linear_probe_needs_two_classes_and_known_test_classes():
    x = np.random.default_rng(0).normal(size=(6, 4))
    with pytest.raises(UserError, match="at least 2 identities.*found 1: solo"):
        linear_probe(x, np.zeros(6), x, np.zeros(6), class_names=["solo"])
    with pytest.raises(UserError, match="never occur"):
        linear_probe(x, [0, 0, 0, 1, 1, 1], x, [0, 1, 2, 0, 1, 2])


def test_align_by_name():
    labels, keep, unknown = align_by_name(
        ["a", "b", "c"], ["b", "c", "zz"], np.array([0, 1, 2, 2, 1, 0])
    )
    assert labels.tolist() == [1, 2, 2, 1]
    assert keep.tolist() == [0, 1, 4, 5]
    assert unknown == ["zz"]


# --------------------------------------------------------------------------- folders end to end


def test_embed_folder_order_and_batch_independence(folders, cnn):
    train, _ = folders
    feats, labels, paths, classes, skipped = embed_folder(cnn, train, batch_size=5)
    assert feats.shape == (24, cnn.num_features) and feats.dtype == np.float32
    assert labels.dtype == np.int64 and skipped == 0
    assert classes == sorted(IDENTITIES)
    assert [classes[y] for y in labels] == [p.parent.name for p in paths]
    again = embed_folder(cnn, train, batch_size=128)[0]
    np.testing.assert_allclose(feats, again, rtol=1e-4, atol=1e-5)


def test_classes_aligned_by_name_unknown_dropped(tmp_path):
    train = make_folder(tmp_path / "train", ["alice", "bob", "carol", "dave"], 4, seed=3)
    # Test lacks alice (positions shift) and has an identity train never saw.
    test = make_folder(tmp_path / "test", ["bob", "carol", "dave", "eve"], 2, seed=4)
    splits = load_splits(train, test)
    assert [splits.train.classes[y] for y in splits.test_labels] == [
        p.parent.name for p in splits.test.paths
    ]
    encoder = frozen(MeanColour(), "mean-colour")
    out = evaluate_encoder(encoder, train, test, k=3)
    assert out["n_test"] == 6 and out["n_train"] == 16 and out["num_classes"] == 4
    assert out["skipped"] == {"train": 0, "test": 0, "dropped_unknown": 2}
    # Mean colour separates the identities: perfect only if labels were matched by name.
    assert out["knn"]["top1"] == 1.0 and out["knn"]["nn1"] == 1.0
    assert out["linear"]["top1"] == 1.0


def test_no_shared_identity_is_a_user_error(tmp_path):
    train = make_folder(tmp_path / "train", ["alice", "bob"], 2, seed=0)
    test = make_folder(tmp_path / "test", ["eve"], 2, seed=0)
    with pytest.raises(UserError, match="no identity in --test"):
        load_splits(train, test)


def test_single_train_identity_is_a_user_error(tmp_path):
    train = make_folder(tmp_path / "train", ["alice"], 3, seed=0)
    test = make_folder(tmp_path / "test", ["alice"], 2, seed=0)
    with pytest.raises(UserError, match=r"at least 2 identities in --train .*found 1: alice"):
        evaluate_encoder(frozen(MeanColour(), "mean-colour"), train, test)


def test_corrupt_test_image_is_skipped_and_counted(tmp_path):
    train = make_folder(tmp_path / "train", list(IDENTITIES), 3, seed=5)
    test = make_folder(tmp_path / "test", list(IDENTITIES), 2, seed=6)
    (test / "bob" / "x.jpg").write_bytes(b"not an image")
    out = evaluate_encoder(frozen(MeanColour(), "mean-colour"), train, test, k=3)
    assert out["skipped"]["test"] == 1 and out["n_test"] == 8


def test_run_eval_writes_report_plots_and_is_deterministic(folders, cnn, tmp_path):
    train, test = folders
    report = run_eval(cnn, train, test, tmp_path / "a", k=5, t=0.1)
    on_disk = json.loads((tmp_path / "a" / "report.json").read_text())
    assert on_disk == report
    assert {"encoder", "n_train", "n_test", "num_classes", "knn", "linear"} <= report.keys()
    assert report["encoder"] == {
        "method": "random",
        "data": "none",
        "arch": "resnet10t",
        "input_size": SIZE,
    }
    assert (report["n_train"], report["n_test"], report["num_classes"]) == (24, 12, 4)
    assert set(report["knn"]) == {"k", "t", "top1", "top5", "nn1"}
    assert report["knn"]["k"] == 5 and report["knn"]["t"] == 0.1
    for value in (*[report["knn"][m] for m in ("top1", "top5", "nn1")], report["linear"]["top1"]):
        assert isinstance(value, float) and 0.0 <= value <= 1.0
    assert report["knn"]["top5"] >= report["knn"]["top1"]
    assert "baseline" not in report
    md = (tmp_path / "a" / "report.md").read_text()
    assert "kNN top-1" in md and "linear top-1" in md and "resnet10t (random)" in md
    pngs = sorted(p.name for p in (tmp_path / "a" / "plots").glob("*.png"))
    assert pngs == ["embedding.png", "retrieval.png"]
    for name in pngs:
        assert Image.open(tmp_path / "a" / "plots" / name).format == "PNG"
    assert not list((tmp_path / "a").rglob("*.tmp"))
    assert run_eval(cnn, train, test, tmp_path / "b", k=5, t=0.1) == report


def test_run_eval_with_baseline_and_merge_section(folders, tmp_path):
    train, test = folders
    encoder = frozen(MeanColour(), "mean-colour", {"method": "dino"})
    baseline = timm_encoder("resnet10t", seed=1)
    report = run_eval(encoder, train, test, tmp_path, k=3, baseline=baseline)
    assert report["knn"]["top1"] == 1.0
    assert report["baseline"]["arch"] == "resnet10t"
    assert set(report["baseline"]) == {"arch", "knn", "linear"}
    assert set(report["baseline"]["knn"]) == {"k", "t", "top1", "top5", "nn1"}
    assert len(list((tmp_path / "plots").glob("*_baseline.png"))) == 2
    table = format_table(report)
    assert "mean-colour (dino)" in table and "baseline: resnet10t" in table
    assert "100.0" in table and "iCartoonFace" not in table

    merged = merge_section(tmp_path, "icartoonface", {"rank1": 0.25, "probes": 40})
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == merged and on_disk["knn"] == report["knn"]
    assert on_disk["icartoonface"] == {"rank1": 0.25, "probes": 40}
    md = (tmp_path / "report.md").read_text()
    assert "iCartoonFace" in md and "25.0" in md and "| 40 |" in md
    merge_section(tmp_path, "icartoonface", {"rank1": 0.5, "probes": 40})
    assert json.loads((tmp_path / "report.json").read_text())["icartoonface"]["rank1"] == 0.5


def test_merge_section_creates_missing_report(tmp_path):
    merge_section(tmp_path, "icartoonface", {"rank1": 1.0, "probes": 2})
    assert json.loads((tmp_path / "report.json").read_text()) == {
        "icartoonface": {"rank1": 1.0, "probes": 2}
    }
    assert "iCartoonFace" in (tmp_path / "report.md").read_text()


def test_format_table_icartoonface_rows_with_baseline():
    report = {
        "encoder": {"arch": "resnet18", "method": "byol"},
        "icartoonface": {"rank1": 0.5, "probes": 8},
        "baseline": {"arch": "resnet18", "icartoonface": {"rank1": 0.125, "probes": 8}},
    }
    table = format_table(report)
    assert "kNN" not in table  # no kNN section was run
    assert "| iCartoonFace | resnet18 (byol) | 50.0 | 8 |" in table
    assert "| iCartoonFace | baseline: resnet18 | 12.5 | 8 |" in table


def test_plots_write_pngs(folders, tmp_path):
    train, _ = folders
    encoder = frozen(MeanColour(), "mean-colour")
    feats, labels, paths, classes, _ = embed_folder(encoder, train)
    _, idx = knn_search(feats, feats, k=6)
    grid = plot_retrieval_grid(
        paths, paths, idx[:, 1:], labels, labels, tmp_path / "r.png", n_queries=3
    )
    tsne = plot_embedding_2d(
        feats, labels, tmp_path / "t.png", method="tsne", max_classes=3, class_names=classes
    )
    for png in (grid, tsne):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 50
    with pytest.raises(ValueError, match="unknown projection"):
        plot_embedding_2d(feats, labels, tmp_path / "u.png", method="umap")
