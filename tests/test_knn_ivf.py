"""Approximate kNN (faiss IVF, ``eval --knn-index ivf``): exact when every cell is scanned,
high recall on clustered features, deterministic, and honest in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backbone_ssl.cli import main
from backbone_ssl.evaluation.knn import (
    default_nprobe,
    ivf_lists,
    knn_classify,
    knn_scores,
    knn_search,
)

ROOT = Path(__file__).resolve().parents[1]


def clustered(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, dim]`` float32 features around ``classes`` random centres, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    noise = 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return centres[labels] + noise, labels


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    gallery, g_labels = clustered(6000, 40, 32, seed=1)
    # queries from the same centres: re-draw with the gallery's centres
    centres = np.stack([gallery[g_labels == c].mean(0) for c in range(40)])
    q_labels = rng.integers(0, 40, 300)
    queries = centres[q_labels] + 0.6 * rng.standard_normal((300, 32)).astype(np.float32)
    return gallery, g_labels, queries.astype(np.float32), q_labels


def test_ivf_defaults_scale_with_the_gallery():
    assert ivf_lists(1_000_000) == 1000 and default_nprobe(1000) == 32
    assert ivf_lists(6000) == 77 and default_nprobe(77) == 8
    assert ivf_lists(20) == 1 and default_nprobe(1) == 1  # tiny gallery: one cell = exact


def test_ivf_scanning_every_cell_is_the_exact_search(data):
    gallery, _, queries, _ = data
    exact_s, exact_i = knn_search(gallery, queries, k=10)
    s, i = knn_search(gallery, queries, k=10, index="ivf", nlist=16, nprobe=16)
    np.testing.assert_array_equal(i, exact_i)
    np.testing.assert_allclose(s, exact_s, atol=1e-5)


def test_ivf_default_recall_and_accuracy_on_clustered_features(data):
    gallery, g_labels, queries, q_labels = data
    _, exact_i = knn_search(gallery, queries, k=20)
    s, i = knn_search(gallery, queries, k=20, index="ivf")
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(i, exact_i)])
    assert recall >= 0.9, recall
    exact = knn_scores(*knn_search(gallery, queries, k=20), g_labels, q_labels, k=20)
    approx = knn_scores(s, i, g_labels, q_labels, k=20)
    assert abs(approx["top1"] - exact["top1"]) <= 0.02
    # a search restricted to one cell misses neighbours: recall drops (the flag matters)
    _, one = knn_search(gallery, queries, k=20, index="ivf", nprobe=1)
    assert np.mean([len(set(a) & set(b)) / 20 for a, b in zip(one, exact_i)]) < recall


IVF_IN_A_NEW_PROCESS = """
import sys
import numpy as np
from backbone_ssl.evaluation.knn import knn_search
d = np.load(sys.argv[1])
sims, idx = knn_search(d["gallery"], d["queries"], k=5, index="ivf", nprobe=2)
np.savez(sys.argv[2], sims=sims, idx=idx)
"""


def test_ivf_is_deterministic_across_processes(data, tmp_path):
    """The same gallery gives the same IVF neighbours in two fresh processes (and in this one):
    k-means training rows and seeds come from the call, not from process state (hash seeds,
    global RNGs, thread scheduling)."""
    gallery, _, queries, _ = data
    np.savez(tmp_path / "data.npz", gallery=gallery, queries=queries)
    outs = []
    for i, threads in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": str(i + 11), "OMP_NUM_THREADS": threads,
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        subprocess.run([sys.executable, "-c", IVF_IN_A_NEW_PROCESS, str(tmp_path / "data.npz"),
                        str(tmp_path / f"out{i}.npz")], check=True, env=env, timeout=300)
        outs.append(np.load(tmp_path / f"out{i}.npz"))
    here = knn_search(gallery, queries, k=5, index="ivf", nprobe=2)
    for out in outs:
        np.testing.assert_array_equal(out["idx"], here[1])
        np.testing.assert_array_equal(out["sims"], here[0])
    # nprobe=2 of 77 cells: an approximate search (it differs from the exact one somewhere)
    assert not np.array_equal(here[1], knn_search(gallery, queries, k=5)[1])


def test_too_few_neighbours_found_are_padded_and_do_not_vote():
    # two far-apart groups of 40 in two cells, one cell scanned: 40 of the k=50 found
    rng = np.random.default_rng(0)
    gallery = np.concatenate([rng.normal(5, 0.1, (40, 4)), rng.normal(-5, 0.1, (40, 4))])
    gallery = gallery.astype(np.float32)
    labels = np.repeat([0, 1], 40)
    queries = np.array([[5.0, 5, 5, 5], [-5.0, -5, -5, -5]], dtype=np.float32)
    sims, idx = knn_search(gallery, queries, k=50, index="ivf", nlist=2, nprobe=1)
    assert idx.shape == (2, 50)
    found = idx >= 0
    assert found.sum(1).tolist() == [40, 40]  # padded
    assert np.all(np.isneginf(sims[~found]))
    scores = knn_scores(sims, idx, labels, np.array([0, 1]), k=50)
    assert scores["top1"] == 1.0 and scores["nn1"] == 1.0
    assert knn_classify(gallery, labels, queries, np.array([0, 1]), k=30)["top1"] == 1.0


def colour_folder(root: Path, per_identity: int, seed: int) -> Path:
    """``root/<identity>/<i>.png``: 4 identities, each a jittered flat colour, 32x32."""
    rng = np.random.default_rng(seed)
    for n, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]):
        (root / f"id{n}").mkdir(parents=True)
        for i in range(per_identity):
            pixel = np.clip(np.array(colour) + rng.integers(-30, 30, 3), 0, 255)
            img = np.broadcast_to(pixel.astype(np.uint8), (32, 32, 3))
            Image.fromarray(np.ascontiguousarray(img)).save(root / f"id{n}" / f"{i}.png")
    return root


def test_eval_cli_records_the_approximate_index(tmp_path, capsys):
    train = colour_folder(tmp_path / "train", 6, seed=3)
    test = colour_folder(tmp_path / "test", 3, seed=4)
    base = ["eval", "--encoder", "random:resnet10t", "--train", str(train), "--test", str(test),
            "--k", "5"]
    assert main([*base, "--out", str(tmp_path / "flat")]) == 0
    flat = json.loads((tmp_path / "flat" / "report.json").read_text())
    assert "index" not in flat["knn"]  # exact reports keep the documented schema
    assert main([*base, "--out", str(tmp_path / "ivf"), "--knn-index", "ivf",
                 "--nprobe", "50"]) == 0
    ivf = json.loads((tmp_path / "ivf" / "report.json").read_text())
    assert ivf["knn"]["index"] == "ivf" and ivf["knn"]["nlist"] == 1
    assert ivf["knn"]["nprobe"] == 1  # clipped to the number of cells
    assert ivf["knn"]["recall_at_k"] == 1.0 and ivf["knn"]["recall_queries"] == 12
    # one cell scanned completely = exact: same accuracies
    assert {m: ivf["knn"][m] for m in ("top1", "top5", "nn1")} == {
        m: flat["knn"][m] for m in ("top1", "top5", "nn1")}
    assert "approximate ivf search" in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "bad"), "--nprobe", "0"]) == 2


def test_approximate_recall_is_measured_against_the_exact_search(data):
    from backbone_ssl.evaluation.protocol import approximate_recall

    gallery, _, queries, _ = data
    _, exact_idx = knn_search(gallery, queries, k=10)
    assert approximate_recall(gallery, queries, exact_idx, 10) == {
        "recall_at_k": 1.0, "recall_queries": 200}
    half = exact_idx.copy()
    half[:, 5:] = len(gallery) + np.arange(5)  # 5 of 10 neighbours wrong everywhere
    assert approximate_recall(gallery, queries, half, 10)["recall_at_k"] == 0.5
    _, one_cell = knn_search(gallery, queries, k=10, index="ivf", nprobe=1)
    assert approximate_recall(gallery, queries, one_cell, 10)["recall_at_k"] < 1.0
