"""Reliability: exact resume after SIGKILL, non-finite stops, hostile input (docs/RELIABILITY.md).

Each hostile-input row of docs/RELIABILITY.md names the test that covers it; rows already covered
elsewhere point to tests/test_config.py, tests/test_export.py, tests/test_pretrain.py and
tests/test_evaluation.py.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbone_ssl.checkpointing import require_finite
from backbone_ssl.cli import main
from backbone_ssl.data.datasets import ImageFolderDataset
from backbone_ssl.data.sampling import ResumableLoader, ResumableSampler, SeededIndex
from backbone_ssl.evaluation.features import load_image_folder
from backbone_ssl.export import read_checkpoint
from backbone_ssl.io import MAX_IMAGE_PIXELS, ImageTooLargeError, open_rgb
from backbone_ssl.methods.base import NonFiniteLossError
from backbone_ssl.methods.byol import BYOL

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1"]


def cli_command() -> list[str]:
    """The installed ``backbone-ssl`` console script (as users run it), else ``python -m``."""
    script = Path(sys.executable).parent / "backbone-ssl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "backbone_ssl.cli"]


def global_step(ckpt: Path) -> int:
    """``global_step`` of a checkpoint being rewritten by another process (-1 if unreadable)."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return int(state["global_step"])
    except Exception:  # noqa: BLE001 - not there yet / replaced while reading
        return -1


# ---- hostile image files ----------------------------------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` 1-bit pixels (a decompression bomb's
    header: opening it must not allocate the claimed image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def write_hostile(path: Path, kind: str) -> Path:
    """Write one broken file of ``kind`` at ``path``."""
    if kind == "truncated_jpeg":
        Image.new("RGB", (64, 64), (200, 30, 30)).save(path.with_suffix(".tmp.jpg"))
        data = path.with_suffix(".tmp.jpg").read_bytes()
        path.with_suffix(".tmp.jpg").unlink()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "text_named_jpg":
        path.write_text("this is a text file, not a JPEG\n")
    elif kind == "bomb_header":  # 20000^2 > 2x limit: PIL itself refuses
        path.write_bytes(png_header(20000, 20000))
    elif kind == "bomb_over_limit":  # between 1x and 2x the limit: PIL would only warn
        side = int((MAX_IMAGE_PIXELS * 1.5) ** 0.5)
        path.write_bytes(png_header(side, side))
    else:
        raise ValueError(kind)
    return path


HOSTILE = ["truncated_jpeg", "zero_byte", "text_named_jpg", "bomb_header", "bomb_over_limit"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_image_is_refused_then_skipped_and_counted(kind, tiny_split):
    train, _ = tiny_split
    bad = write_hostile(train / "id_0" / f"bad_{kind}.jpg", kind)
    expected = ImageTooLargeError if kind.startswith("bomb") else OSError
    with pytest.raises(expected):
        open_rgb(bad)
    # training data: the broken file is replaced by the next decodable one and counted
    ds = ImageFolderDataset(train)
    i = ds.paths.index(bad)
    used, img, passed = ds.decode_near(i)
    assert used == i + 1 and passed == 1 and img.mode == "RGB"
    assert ds.skipped[str(bad)] == 1
    # evaluation data: the file is dropped before embedding, counted once
    ev, skipped = load_image_folder(train)
    assert skipped == 1 and bad not in ev.paths and len(ev.paths) == len(ds.paths) - 1


def test_odd_colour_modes_decode_to_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)  # pure red in CMYK
    grey = tmp_path / "grey.png"
    Image.new("L", (8, 8), 77).save(grey)
    rgba = tmp_path / "rgba.png"
    im = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: composited on white
    im.save(rgba)
    dark16 = tmp_path / "dark16.png"  # 16-bit with every value <= 255: still near black
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint16)).save(dark16)
    bright16 = tmp_path / "bright16.png"
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(bright16)
    assert Image.open(dark16).mode == "I;16"
    out = {p.name: np.asarray(open_rgb(p)) for p in (cmyk, grey, rgba, dark16, bright16)}
    for arr in out.values():
        assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8
    r, g, b = out["cmyk.jpg"][4, 4].astype(int)
    assert r > 200 and g < 40 and b < 40
    assert (out["grey.png"] == 77).all()
    assert out["rgba.png"][0, 0].tolist() == [255, 255, 255]
    assert out["rgba.png"][4, 4].tolist() == [0, 0, 255]
    assert (out["dark16.png"] <= 1).all()  # 200/65535 of full scale
    assert (out["bright16.png"] == 255).all()


def test_training_survives_every_hostile_file(tiny_split, tmp_path):
    train, _ = tiny_split
    for j, kind in enumerate(HOSTILE):  # img_j_bad.jpg sorts between img_j.png and img_{j+1}
        write_hostile(train / "id_1" / f"img_{j}_bad.jpg", kind)
    Image.new("CMYK", (32, 32), (10, 200, 30, 0)).save(train / "id_2" / "cmyk.jpg")
    Image.fromarray(np.full((32, 32), 30000, dtype=np.uint16)).save(train / "id_3" / "g16.png")
    run = tmp_path / "run"
    # 24 good + 2 odd-mode + 5 broken = 31 files, one batch of 31: each broken file passed once
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run),
                 "trainer.max_epochs=1", *FAST, "data.batch_size=31"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        last = [r for r in csv.DictReader(f) if r.get("train/skipped_images")][-1]
    assert float(last["train/skipped_images"]) == len(HOSTILE)


# ---- refused inputs on the command line -------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickles_are_refused_everywhere_on_the_command_line(tmp_path, monkeypatch, capsys,
                                                            tiny_split):
    monkeypatch.chdir(tmp_path)
    train, test = tiny_split
    payload = pickle.dumps({"state_dict": _Boom(), "global_step": 1})
    (tmp_path / "evil.pt").write_bytes(payload)
    torch.save({"state_dict": {}, "x": _Boom()}, tmp_path / "evil.ckpt")  # torch zip format
    disguised = tmp_path / "enc"
    disguised.mkdir()
    (disguised / "model.safetensors").write_bytes(payload)
    (disguised / "config.json").write_text(json.dumps({"architecture": "resnet10t"}))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(payload)
    cases = [
        (["eval", "--encoder", "evil.pt", "--train", str(train), "--test", str(test)],
         "refusing to load"),
        (["eval", "--encoder", "evil.ckpt", "--train", str(train), "--test", str(test)],
         "refusing to load"),
        (["eval", "--encoder", str(disguised), "--train", str(train), "--test", str(test)],
         "not a valid safetensors file"),
        (["eval", "--encoder", str(disguised / "model.safetensors"), "--train", str(train),
          "--test", str(test)], "not a valid safetensors file"),
        (["export", "evil.ckpt", "--out", "exported"], "refusing to load"),
        (["pretrain", "byol", "--data", str(train), "--out", str(run), "--resume"],
         "refusing to load"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "exported").exists()


def test_one_identity_folder_given_to_eval(tmp_path, capsys, tiny_split):
    train, test = tiny_split
    one = tmp_path / "one"
    (one / "solo").mkdir(parents=True)
    for p in sorted((train / "id_0").iterdir()):
        (one / "solo" / p.name).write_bytes(p.read_bytes())
    assert main(["eval", "--encoder", "random:resnet10t", "--train", str(one),
                 "--test", str(test), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at least 2 identities" in err[0] and "solo" in err[0]


def test_missing_paths_are_one_line_errors(tmp_path, capsys, tiny_split):
    train, _ = tiny_split
    cases = [
        (["eval", "--encoder", "random:resnet10t", "--train", str(tmp_path / "nope"),
          "--test", str(train)], "not found"),
        (["eval", "--encoder", str(tmp_path / "no_encoder"), "--train", str(train),
          "--test", str(train)], "encoder not found"),
        (["pretrain", "byol", "--config", str(tmp_path / "nope.yaml"), "--data", str(train)],
         "config file not found"),
        (["export", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "e")],
         "checkpoint not found"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)


# ---- non-finite loss ----------------------------------------------------------------------------
def test_non_finite_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(
        tiny_split, tmp_path, monkeypatch, capsys):
    train, _ = tiny_split
    real_step = BYOL.ssl_step

    def diverging(self, views):
        loss, emb = real_step(self, views)
        return (loss * float("nan") if self.global_step >= 5 else loss), emb

    monkeypatch.setattr(BYOL, "ssl_step", diverging)
    run = tmp_path / "run"
    rc = main(["pretrain", "byol", "--data", str(train), "--out", str(run), *FAST,
               "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=2"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0] and "at step 5" in err[0], err
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())
    assert not (run / "encoder").exists()


def test_non_finite_weights_are_never_checkpointed():
    state = {"a": torch.ones(3), "steps": torch.tensor([3]), "b": torch.tensor([1.0, float("inf")])}
    with pytest.raises(NonFiniteLossError, match="'b' at step 7"):
        require_finite(state, 7, "last.ckpt")
    require_finite({"a": torch.ones(2), "n": torch.tensor(5)}, 1, "last.ckpt")


# ---- resumable sampler --------------------------------------------------------------------------
class _Noisy(torch.utils.data.Dataset):
    """Item ``[index, a random draw]``: shows which sample and which augmentation came out."""

    def __len__(self) -> int:
        return 20

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(torch.rand(())), float(np.random.rand())])


def read_epochs(loader: ResumableLoader, first: int, n: int) -> list[list[torch.Tensor]]:
    out = []
    for epoch in range(first, first + n):
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        out.append(list(loader))
    return out


def test_loader_resumes_mid_epoch_with_the_same_batches_and_views():
    ref = read_epochs(ResumableLoader(_Noisy(), batch_size=4, seed=3, drop_last=True), 0, 3)
    torch.manual_seed(123)  # the global RNG state must not matter
    loader = ResumableLoader(_Noisy(), batch_size=4, seed=3, drop_last=True)
    list(loader)  # some other epoch was read before: irrelevant
    loader.load_state_dict({"epoch": 1, "batches": 2})
    assert len(loader) == 5  # Lightning counts the full epoch; the skipped part is "done"
    resumed = read_epochs(loader, 1, 2)
    assert len(resumed[0]) == 3
    for got, want in zip(resumed[0] + resumed[1], ref[1][2:] + ref[2]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert loader.state_dict() == {"epoch": 2, "batches": 5}
    # epochs differ in order and in augmentation draws
    assert not torch.equal(torch.cat(ref[0]), torch.cat(ref[1]))


def test_sampler_shards_like_distributed_sampler(monkeypatch):
    from backbone_ssl.data import sampling

    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_world", lambda rank=rank: (2, rank))
        sampler = ResumableSampler(list(range(11)), seed=0)
        sampler.set_epoch(4)
        items = list(sampler)
        assert all(isinstance(i, SeededIndex) for i in items) and len(sampler) == 6
        shards.append([i.index for i in items])
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(11))  # padded, every index seen
    ref = torch.utils.data.DistributedSampler(list(range(11)), num_replicas=2, rank=1, seed=0)
    ref.set_epoch(4)
    assert shards[1] == list(ref)


# ---- kill -9 and --resume -----------------------------------------------------------------------
def run_cli(args: list[str], env: dict) -> None:
    proc = subprocess.run(cli_command() + args, check=False, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "dino"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(method, tiny_split, tmp_path):
    train, _ = tiny_split  # 24 images, batch 8: 3 steps an epoch; the kill lands mid-epoch
    args = ["pretrain", method, "--data", str(train), *FAST, "trainer.deterministic=true",
            "trainer.max_steps=24", "trainer.checkpoint_every_n_steps=2"]
    if method == "dino":
        args.append("dino.local_crop_size=16")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    run_cli(args + ["--out", str(tmp_path / "ref")], env)

    killed = tmp_path / "killed"
    ckpt = killed / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cli_command() + args + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while global_step(ckpt) < 4:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    at_kill = read_checkpoint(ckpt)["global_step"]  # a whole file: the write is atomic
    assert 4 <= at_kill < 24
    assert not (killed / "encoder").exists()
    torn = ckpt.parent / ".last.ckpt.x1y2.tmp"  # what a kill during a write leaves behind
    torn.write_bytes(b"PK\x03\x04 half a checkpoint")

    run_cli(["pretrain", method, "--out", str(killed), "--resume"], env)
    assert not torn.exists()
    want = read_checkpoint(tmp_path / "ref" / "checkpoints" / "last.ckpt")
    got = read_checkpoint(ckpt)
    assert got["global_step"] == want["global_step"] == 24
    teacher = "teacher_backbone." if method == "dino" else "backbone_momentum."
    keys = list(want["state_dict"])
    assert any(k.startswith(teacher) for k in keys)
    if method == "dino":
        assert "criterion.center" in keys
        assert not torch.equal(want["state_dict"]["criterion.center"],
                               torch.zeros_like(want["state_dict"]["criterion.center"]))
    assert sorted(got["state_dict"]) == sorted(keys)
    for k in keys:  # student, EMA teacher, heads, BN statistics, DINO centre
        torch.testing.assert_close(got["state_dict"][k], want["state_dict"][k],
                                   rtol=1e-5, atol=1e-6, msg=k)
    for a, b in zip(got["optimizer_states"][0]["state"].values(),
                    want["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=1e-5, atol=1e-6)
    assert got["lr_schedulers"][0]["last_epoch"] == want["lr_schedulers"][0]["last_epoch"]
    # metrics.csv holds every step at most once; only the row of the step that triggered the
    # checkpoint (logged by Lightning after the checkpoint hook) may be lost to the kill
    with open(killed / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == sorted(set(steps))
    assert set(range(24)) - set(steps) <= {at_kill - 1}


class _ThreeRngs(torch.utils.data.Dataset):
    """Item i: a draw from each global generator (torch, numpy, python) plus i."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, i: int) -> torch.Tensor:
        import random

        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()),
                             random.random()])


def test_worker_loaders_draw_the_same_views_as_the_main_process_and_resume_exactly():
    """Workers seed each item and skip restoring their generators (sampling.seeded_rng): the
    views must equal the main process's, a resumed worker loader must continue exactly, and the
    main process's own generators are left as they were."""
    import random

    def batches(workers: int, state: dict | None = None) -> list[torch.Tensor]:
        ld = ResumableLoader(_ThreeRngs(), batch_size=4, seed=3, drop_last=False,
                             num_workers=workers)
        ld.sampler.set_epoch(1)
        if state is not None:
            ld.load_state_dict(state)
        return list(ld)

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    before = (np.random.get_state()[1].copy(), random.getstate())
    main_proc = batches(0)
    # (torch's generator is advanced by DataLoader itself, one base-seed draw per iterator)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    workers = batches(2)
    assert len(main_proc) == 6 and all(torch.equal(a, b) for a, b in zip(main_proc, workers))
    assert len({round(float(v), 6) for b in workers for v in b[:, 1]}) == 24  # real draws
    resumed = batches(2, {"epoch": 1, "batches": 4})
    assert len(resumed) == 2 and all(torch.equal(a, b) for a, b in zip(resumed, main_proc[4:]))
