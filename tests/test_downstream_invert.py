"""downstream invert: identical runs train identical E weights and give identical metrics, and
bad input (a generator run of another task, an encoder at another size, a mask over the whole
image) is one line, exit 2."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import draw_identity_folder
from safetensors.torch import load_file
from test_invert import _tiny_generator_run

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.export import export_encoder
from downstream import run_downstream

RUN = ["trainer.max_steps=3", "data.batch_size=4", "optimise.steps=3", "data.eval_images=4",
       "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    faces = draw_identity_folder(root / "faces", identities=2, per_identity=6, size=16)
    torch.manual_seed(0)
    return faces, _tiny_generator_run(root)


def _invert(faces, gen, out, extra=()):
    report = run_downstream("invert", encoder="random:resnet10t", data=str(faces), out=str(out),
                            overrides=[f"generator={gen}", *RUN, *extra])
    return report, load_file(str(out / "checkpoints" / "latent_encoder.safetensors"))


def test_identical_runs_train_identical_encoders(setup, tmp_path):
    faces, gen = setup
    runs = []
    for k in range(2):  # whatever the global RNGs hold before a run, it seeds its own
        torch.manual_seed(100 + k)
        random.seed(100 + k)
        np.random.seed(100 + k)
        runs.append(_invert(faces, gen, tmp_path / f"run{k}"))
    (r0, w0), (r1, w1) = runs
    # trainer.deterministic=true holds for the run only: the process's setting is given back
    assert not torch.are_deterministic_algorithms_enabled()
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert r0["metrics"] == r1["metrics"]
    assert r0["budget"]["threads"] == torch.get_num_threads()
    # another seed trains another E (the test can see a difference)
    r2, w2 = _invert(faces, gen, tmp_path / "seed1", ["seed=1"])
    assert not torch.equal(w0["head.weight"], w2["head.weight"])


def _cli(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_input_one_line_exit_2(setup, tmp_path, capsys):
    faces, gen = setup
    base = ["downstream", "invert", "--data", str(faces), *RUN]
    # a generator run of another task
    other = tmp_path / "bigan_run"
    (other / "checkpoints").mkdir(parents=True)
    (other / "config.yaml").write_text("task: bigan\n")
    (other / "checkpoints" / "last.ckpt").write_bytes(b"")
    code, err = _cli([*base, "--encoder", "random:resnet10t", "--generator", str(other),
                      "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and len(err) == 1 and "'bigan' run, not a stylegan run" in err[0]
    # an encoder whose input size differs from the generator's resolution (16 px)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc32",
                         input_size=32)
    code, err = _cli([*base, "--encoder", str(enc), "--generator", str(gen),
                      "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and len(err) == 1 and "takes 32x32 input" in err[0]
    assert "data.resize_to_encoder=true" in err[0]
    # ... accepted with data.resize_to_encoder=true
    code, _ = _cli([*base, "--encoder", str(enc), "--generator", str(gen),
                    "--out", str(tmp_path / "o3"), "data.resize_to_encoder=true"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "o3" / "report.json").read_text())["encoder"]["input_size"] == 32
    # a mask that covers the whole image: refused at load, and where rounding makes it whole
    for fraction in ("1.0", "0.99"):
        code, err = _cli([*base, "--encoder", "random:resnet10t", "--generator", str(gen),
                          "--mask", "box", f"mask.box_fraction={fraction}",
                          "--out", str(tmp_path / f"o4-{fraction}")], capsys)
        assert code == 2 and len(err) == 1 and "whole" in err[0]
        assert not (tmp_path / f"o4-{fraction}" / "report.json").exists()
