"""``backbone-ssl cluster`` end to end: outputs, golden faces with toy ground truth, exported
pseudo-identities training ``downstream siamese``, and bad input (one line, exit 2)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import draw_identity_folder

from backbone_ssl.cli import main
from backbone_ssl.export import read_checkpoint

FAST = ["graph.k=4", "large_cluster=3"]


def _err_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    err = [ln for ln in err if not ln.startswith("INFO ")]
    assert len(err) == 1, err
    return err[0]


def test_cluster_identity_folders_writes_outputs(tmp_path):
    data = draw_identity_folder(tmp_path / "ids", identities=4, per_identity=6)
    out = tmp_path / "out"
    assert main(["cluster", "--encoder", "pixels:16", "--data", str(data), "--out", str(out),
                 "--method", "leiden", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == "folders" and report["n_faces"] == 24
    # the toy identities are one colour + shape each: raw pixels separate them
    assert report["pairwise_f"] == pytest.approx(1.0) and report["nmi"] == pytest.approx(1.0)
    assert report["bcubed_f"] == pytest.approx(1.0)
    assert report["methods"]["leiden"]["scores"]["n_clusters"] == 4
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert len(rows) == 24 and set(rows[0]) == {"file", "cluster", "confidence"}
    by_id: dict[str, set] = {}
    for r in rows:
        by_id.setdefault(r["file"].split("/")[0], set()).add(r["cluster"])
    assert all(len(v) == 1 for v in by_id.values()) and len(set.union(*by_id.values())) == 4
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    assert len(report["sheets"]) >= 4 and all((out / s).is_file() for s in report["sheets"])
    assert (out / "size_histogram.png").is_file()
    # an earlier cluster output may be written again
    assert main(["cluster", "--encoder", "pixels:16", "--data", str(data), "--out", str(out),
                 "--method", "all", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"rank_order", "leiden", "infomap", "hdbscan",
                                      "agglomerative"}
    assert all((out / f"clusters_{m}.csv").is_file() for m in report["methods"])


@pytest.mark.slow
def test_cluster_golden_faces_group_by_book_with_ground_truth(tmp_path):
    comics, prep = tmp_path / "comics", tmp_path / "prep"
    assert main(["toy", "comics", "--out", str(comics), "--books", "2", "--pages", "3"]) == 0
    assert main(["golden", "prepare", "--panels", str(comics / "raw_panel_images"),
                 "--annotations", str(comics / "face_annotations"), "--out", str(prep)]) == 0
    out = tmp_path / "out"
    assert main(["cluster", "--encoder", "pixels:16", "--data", str(prep / "faces"),
                 "--out", str(out), "--group-by", "book", *FAST]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["labels"].startswith("ground truth")  # found beside the panels folder
    scores = report["methods"]["rank_order"]["scores"]
    n_faces = len(list((prep / "faces").rglob("*.jpg")))
    assert report["n_faces"] == n_faces and scores["scored"] + scores["unlabelled"] == n_faces
    assert scores["scored"] > 0.8 * n_faces  # a few false detections at most
    assert 0.0 <= report["pairwise_f"] <= 1.0 and 0.0 <= report["nmi"] <= 1.0
    # the casts are 3-5 characters a book, identities never shared across books
    assert scores["n_identities"] <= 10


@pytest.mark.slow
def test_exported_pseudo_identities_train_siamese(tmp_path):
    data = draw_identity_folder(tmp_path / "ids", identities=6, per_identity=10)
    ids = tmp_path / "pseudo"
    assert main(["cluster", "--encoder", "pixels:16", "--data", str(data), "--out",
                 str(tmp_path / "out"), "--method", "leiden", "--export-identities", str(ids),
                 *FAST]) == 0
    folders = sorted(p for p in ids.iterdir() if p.is_dir())
    assert len(folders) >= 6 and (ids / "identities.csv").is_file()
    one = next(folders[0].iterdir())
    assert one.stat().st_nlink >= 2  # hard link, no copy
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["export"]["identities"] == len(folders)
    assert report["export"]["linked"] == sum(len(list(f.iterdir())) for f in folders) >= 50
    run = tmp_path / "siamese"
    assert main(["downstream", "siamese", "--encoder", "random:resnet10t", "--data", str(ids),
                 "--out", str(run), "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                 "data.image_size=32", "data.batch_size=8", "data.train_pairs=32",
                 "data.eval_pairs=16", "model.hidden_dim=16", "model.embed_dim=8",
                 "data.split=image", "trainer.save_checkpoint=false"]) == 0
    sreport = json.loads((run / "report.json").read_text())
    assert sreport and (run / "report.md").is_file()
    # the same pseudo-identities are labelled identity folders for supervised identity learning
    ident = tmp_path / "identity"
    assert main(["pretrain", "identity", "--data", str(ids), "--out", str(ident),
                 "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                 "data.num_workers=0", "model.arch=resnet10t", "data.image_size=32",
                 "data.batch_size=8"]) == 0
    ckpt = read_checkpoint(ident / "checkpoints" / "last.ckpt")
    centres = [v for k, v in ckpt["state_dict"].items() if k.startswith("criterion.")]
    assert centres and centres[0].shape[-1] == len(folders)  # one class centre per cluster
    assert json.loads((ident / "encoder" / "config.json").read_text())[
        "backbone_ssl"]["method"] == "identity"


def test_bad_inputs_one_line_exit_2(tmp_path, capsys):
    small = draw_identity_folder(tmp_path / "small", identities=2, per_identity=3)
    out = str(tmp_path / "o")
    assert main(["cluster", "--encoder", "pixels", "--data", str(small), "--out", out]) == 2
    assert "neighbour count graph.k=10" in _err_line(capsys)
    data = draw_identity_folder(tmp_path / "ids", identities=3, per_identity=5)
    assert main(["cluster", "--encoder", "pixels", "--data", str(data), "--out", out,
                 "--method", "kmeans"]) == 2
    assert "unknown --method 'kmeans'" in _err_line(capsys)
    assert main(["cluster", "--encoder", str(tmp_path / "nope"), "--data", str(data),
                 "--out", out, *FAST]) == 2
    assert "encoder not found" in _err_line(capsys)
    broken = tmp_path / "enc"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (broken / "config.json").write_text("{}")
    assert main(["cluster", "--encoder", str(broken), "--data", str(data), "--out", out,
                 *FAST]) == 2
    _err_line(capsys)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(["cluster", "--encoder", "pixels", "--data", str(data), "--out", str(foreign),
                 *FAST]) == 2
    assert "not an output of backbone-ssl" in _err_line(capsys)
    assert (foreign / "keep.txt").read_text() == "mine" and len(os.listdir(foreign)) == 1
    assert main(["cluster", "--encoder", "pixels", "--data", str(data), "--out", out,
                 "--group-by", "book", *FAST]) == 2
    assert "--group-by book needs" in _err_line(capsys)


def test_export_replaces_only_its_own_earlier_faces(tmp_path):
    from backbone_ssl.cluster.export import export_identities

    src = draw_identity_folder(tmp_path / "ids", identities=2, per_identity=3)
    paths = sorted(src.rglob("*.png"))
    out = tmp_path / "pseudo"
    conf = np.ones(len(paths))
    export_identities(out, paths, np.array([0, 0, 0, 1, 1, 1]), conf, src)
    (out / "cluster_000000" / "notes.txt").write_text("user file")
    counts = export_identities(out, paths, np.array([2, 2, 3, 3, 3, 3]), conf, src)
    assert counts == {"identities": 2, "faces": 6, "linked": 6, "copied": 0}
    assert not (out / "cluster_000001").exists()
    assert (out / "cluster_000000" / "notes.txt").read_text() == "user file"
    assert sorted(p.name for p in (out / "cluster_000003").iterdir()) == [
        "id_0__img_2.png", "id_1__img_0.png", "id_1__img_1.png", "id_1__img_2.png"]


def test_golden_crop_order_traces_boxes_to_identities(tmp_path):
    from PIL import Image

    from backbone_ssl.cluster.labels import _panel_identities
    from backbone_ssl.data.golden_format import PrepareArgs

    panel = tmp_path / "0_0.jpg"
    Image.new("RGB", (200, 100)).save(panel)
    boxes = [[10, 10, 60, 60, 0.95, 7],      # kept, second most confident
             [100, 10, 150, 60, 0.99, 3],    # kept, first
             [100, 10, 150, 60, 0.99, 3],    # duplicate line: skipped by prepare
             [150, 50, 230, 120, 0.97, 5],   # clipped to the panel (80 -> 50 x 50), kept
             [0, 0, 20, 20, 0.99, 9],        # under min_face 32: skipped
             [60, 40, 100, 90, 0.5, -1]]     # below min_conf: skipped
    assert _panel_identities(boxes, panel, PrepareArgs()) == [3, 5, 7]


def test_bad_method_in_a_fresh_process_is_one_stderr_line(tmp_path):
    import subprocess
    import sys

    data = draw_identity_folder(tmp_path / "ids", identities=3, per_identity=5)
    proc = subprocess.run([sys.executable, "-m", "backbone_ssl.cli", "cluster", "--encoder",
                           "pixels", "--data", str(data), "--out", str(tmp_path / "o"),
                           "--method", "kmeans"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "backbone-ssl: error: unknown --method 'kmeans' (choose from rank_order, leiden, "
        "infomap, hdbscan, agglomerative, all)"]
