"""Data safety and hostile input (issue 11; docs/RELIABILITY.md, "Hostile input" table).

Every command's ``--out`` guard (backbone_ssl/outdir.py), the run lock (runlock.py), resume
checks (train.py), config ranges (config.py), quiet stderr (quiet.py), unverified weights.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backbone_ssl.cli import main
from backbone_ssl.errors import UserError
from backbone_ssl.outdir import MARKER_NAME, prepare_out_dir
from backbone_ssl.runlock import HOLDER_NAME, RunLock
from tests.conftest import draw_identity_folder

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.max_steps=2"]


def one_error_line(capsys: pytest.CaptureFixture, *needles: str) -> str:
    """The captured stderr is exactly one ``backbone-ssl: error:`` line holding ``needles``."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("backbone-ssl: error: "), err
    assert "Traceback" not in "\n".join(err)
    for n in needles:
        assert n in err[-1], (n, err[-1])
    return err[-1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, finished 2-step byol run folder), made once for the module."""
    root = tmp_path_factory.mktemp("safety")
    data = draw_identity_folder(root / "data", identities=2, per_identity=8)
    run = root / "run"
    assert main(["pretrain", "byol", "--data", str(data), "--out", str(run), *FAST]) == 0
    return data, run


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) with its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# ---- (1) the --out guard, for every command ----------------------------------------------------
def commands(tmp: Path, data: Path, run: Path, out: Path) -> dict[str, list[str]]:
    """Each command of the CLI contract with ``--out out`` (inputs valid where it matters)."""
    ckpt = run / "checkpoints" / "last.ckpt"
    enc = run / "encoder"
    return {
        "toy faces": ["toy", "faces", "--out", str(out)],
        "toy comics": ["toy", "comics", "--out", str(out)],
        "golden prepare": ["golden", "prepare", "--panels", str(tmp), "--annotations", str(tmp),
                           "--out", str(out)],
        "pretrain": ["pretrain", "byol", "--data", str(data), "--out", str(out), *FAST],
        "eval": ["eval", "--encoder", str(enc), "--train", str(data), "--test", str(data),
                 "--out", str(out)],
        "export": ["export", str(ckpt), "--out", str(out)],
        "export --force": ["export", str(ckpt), "--out", str(out), "--force"],
        "export ssupergan": ["export", str(ckpt), "--out", str(out), "--format", "ssupergan"],
        "search": ["search", "byol", "--trials", "1", "--data", str(data), "--out", str(out)],
        "demo": ["demo", "--out", str(out)],
        "downstream": ["downstream", "siamese", "--encoder", str(enc), "--data", str(data),
                       "--out", str(out)],
    }


COMMANDS = ["toy faces", "toy comics", "golden prepare", "pretrain", "eval", "export",
            "export --force", "export ssupergan", "search", "demo", "downstream"]


@pytest.mark.parametrize("kind", ["file", "folder"])
@pytest.mark.parametrize("command", COMMANDS)
def test_precious_out_survives_every_command(tiny_run, tmp_path, capsys, command, kind):
    data, run = tiny_run
    out = tmp_path / "precious"
    if kind == "file":
        out.write_bytes(b"thesis draft v7\x00\xff")
    else:
        (out / "sub").mkdir(parents=True)
        (out / "notes.txt").write_text("do not lose")
        (out / "sub" / "data.bin").write_bytes(os.urandom(64))
    before = snapshot(out)
    capsys.readouterr()
    assert main(commands(tmp_path, data, run, out)[command]) == 2
    one_error_line(capsys, str(out))
    assert snapshot(out) == before


@pytest.mark.parametrize("target", ["run", "checkpoints", "data"])
def test_export_at_the_run_folder_or_above_a_source_is_refused(tiny_run, capsys, target):
    data, run = tiny_run
    out = {"run": run, "checkpoints": run / "checkpoints", "data": data}[target]
    before = snapshot(run), snapshot(data)
    capsys.readouterr()
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 2
    one_error_line(capsys)
    assert (snapshot(run), snapshot(data)) == before


def test_eval_out_above_its_data_is_refused(tiny_run, capsys):
    data, run = tiny_run
    assert main(["eval", "--encoder", str(run / "encoder"), "--train", str(data), "--test",
                 str(data), "--out", str(data.parent)]) == 2
    one_error_line(capsys, "folder above it")


def test_export_force_replaces_only_an_earlier_export(tiny_run, tmp_path, capsys):
    _, run = tiny_run
    ckpt = str(run / "checkpoints" / "last.ckpt")
    out = tmp_path / "enc"
    assert main(["export", ckpt, "--out", str(out)]) == 0
    assert main(["export", ckpt, "--out", str(out)]) == 2
    one_error_line(capsys, "--force")
    assert main(["export", ckpt, "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    (out / "mine.txt").write_text("added by the user")
    assert main(["export", ckpt, "--out", str(out), "--force"]) == 2
    assert (out / "mine.txt").read_text() == "added by the user"


def test_exported_folder_has_shareable_modes(tiny_run, tmp_path):
    _, run = tiny_run
    out = tmp_path / "enc"
    assert main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(out)]) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE((run / "encoder").stat().st_mode) == 0o777 & ~umask


def test_same_command_may_rewrite_its_own_output_but_not_anothers(tmp_path, capsys):
    out = tmp_path / "faces"
    args = ["toy", "faces", "--out", str(out), "--identities", "2", "--per-identity", "4",
            "--size", "16"]
    assert main(args) == 0
    assert json.loads((out / MARKER_NAME).read_text())["command"] == "toy faces"
    assert main(args) == 0
    capsys.readouterr()
    assert main(["toy", "comics", "--out", str(out)]) == 2
    one_error_line(capsys, "`toy faces`")


def test_unwritable_out_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["toy", "faces", "--out", str(blocker / "sub")]) == 2
    one_error_line(capsys, "cannot write")
    with pytest.raises(UserError, match="cannot write"):
        prepare_out_dir(blocker / "sub", "export", mark=False)


def test_prepare_out_dir_ignores_non_path_sources(tmp_path):
    out = prepare_out_dir(tmp_path / "o", "eval", sources=["random:resnet10t", "pixels:16", None])
    assert out.is_dir() and (out / MARKER_NAME).is_file()


# ---- (2) resume is checked before anything is written ------------------------------------------
@pytest.fixture()
def fresh_run(tiny_run, tmp_path) -> Path:
    """A copy of the module's run (tests below change it)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run[1], run)
    return run


@pytest.mark.parametrize("override", [
    "model.arch=resnet18", "data.image_size=48", "data.batch_size=4", "seed=3",
    "byol.proj_hidden_dim=64", "data.max_images=5",
])
def test_resume_refuses_frozen_keys_and_leaves_config_alone(fresh_run, capsys, override):
    before = snapshot(fresh_run)
    capsys.readouterr()
    assert main(["pretrain", "byol", "--out", str(fresh_run), "--resume", override]) == 2
    key = override.split("=")[0]
    one_error_line(capsys, f"cannot change '{key}'")
    after = snapshot(fresh_run)
    after.pop(HOLDER_NAME, None)
    assert after == before


def test_resume_refuses_changed_data(fresh_run, tmp_path, capsys):
    other = draw_identity_folder(tmp_path / "other", identities=2, per_identity=4)
    assert main(["pretrain", "byol", "--out", str(fresh_run), "--resume", "--data",
                 str(other)]) == 2
    one_error_line(capsys, "'data.path'")


def test_resume_accepts_safe_keys_and_rewrites_config_after_loading(fresh_run):
    assert main(["pretrain", "byol", "--out", str(fresh_run), "--resume",
                 "trainer.max_steps=3", "trainer.log_every_n_steps=1"]) == 0
    assert "max_steps: 3" in (fresh_run / "config.yaml").read_text()
    ckpt = torch.load(fresh_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3


def test_resume_under_another_method_names_the_right_command(fresh_run, capsys):
    assert main(["pretrain", "dino", "--out", str(fresh_run), "--resume"]) == 2
    one_error_line(capsys, "'byol' run", "pretrain byol")


def test_resume_without_out_is_refused(capsys):
    assert main(["pretrain", "byol", "--resume"]) == 2
    one_error_line(capsys, "--resume needs --out")


# ---- (3) one process per run folder -------------------------------------------------------------
HOLD = """
import sys, time
from backbone_ssl.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_second_process_on_a_run_folder_is_refused(fresh_run, capsys):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fresh_run)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        metrics = (fresh_run / "metrics.csv").read_bytes()
        capsys.readouterr()
        assert main(["pretrain", "byol", "--out", str(fresh_run), "--resume",
                     "trainer.max_steps=4"]) == 2
        one_error_line(capsys, f"pid {holder.pid}", "in use")
        assert (fresh_run / "metrics.csv").read_bytes() == metrics
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: its record is stale and the next run breaks it with a line
    assert json.loads((fresh_run / HOLDER_NAME).read_text())["pid"] == holder.pid
    assert main(["pretrain", "byol", "--out", str(fresh_run), "--resume",
                 "trainer.max_steps=3"]) == 0
    assert not (fresh_run / HOLDER_NAME).exists()


def test_stale_lock_is_broken_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    tmp_path.joinpath(HOLDER_NAME).write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "since": "earlier"}))
    with caplog.at_level("WARNING"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / HOLDER_NAME).read_text())["pid"] == os.getpid()
    assert any("stale lock" in r.getMessage() and str(dead.pid) in r.getMessage()
               for r in caplog.records)


def test_lock_refuses_a_live_holder_recorded_on_this_host(tmp_path):
    import socket

    (tmp_path / HOLDER_NAME).write_text(json.dumps(
        {"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(UserError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()


# ---- (4) every config value validated at load ---------------------------------------------------
BAD_VALUES = [
    ("data.image_size=0", "data.image_size"),
    ("data.image_size=4", "data.image_size"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.max_images=0", "data.max_images"),
    ("data.val_every_n_epochs=0", "data.val_every_n_epochs"),
    ("optim.lr=-1", "optim.lr"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.momentum=1.5", "optim.momentum"),
    ("optim.warmup_fraction=1", "optim.warmup_fraction"),
    ("optim.min_lr_fraction=2", "optim.min_lr_fraction"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.max_steps=-5", "trainer.max_steps"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
    ("trainer.num_nodes=0", "trainer.num_nodes"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"),
    ("trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_every_n_steps"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches"),
    ("trainer.precision=bogus", "trainer.precision"),
    ("trainer.accelerator=quantum", "trainer.accelerator"),
    ("trainer.devices=0", "trainer.devices"),
    ("trainer.devices=many", "trainer.devices"),
]


@pytest.mark.parametrize("override,key", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_config_values_are_one_line_before_data_is_scanned(tmp_path, capsys, override, key):
    out = tmp_path / "run"
    # --data does not exist: a key error (not "data folder not found") proves the order
    assert main(["pretrain", "byol", "--data", str(tmp_path / "nowhere"), "--out", str(out),
                 override]) == 2
    one_error_line(capsys, f"'{key}")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("acc", ["gpu", "cuda"])
def test_gpu_accelerator_without_a_gpu(tmp_path, capsys, acc):
    assert main(["pretrain", "byol", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                 f"trainer.accelerator={acc}"]) == 2
    one_error_line(capsys, "no ", "device on this machine")


def test_yaml_list_config_is_named(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- data\n- model\n")
    assert main(["pretrain", "byol", "--config", str(cfg), "--data", str(tmp_path)]) == 2
    one_error_line(capsys, "must be a mapping", "not a list")


def test_eval_batch_size_zero(tiny_run, capsys):
    data, run = tiny_run
    assert main(["eval", "--encoder", str(run / "encoder"), "--train", str(data), "--test",
                 str(data), "--batch-size", "0"]) == 2
    one_error_line(capsys, "--batch-size")


def test_all_undecodable_training_folder_is_one_line(tmp_path, capsys):
    for i in range(4):
        d = tmp_path / "bad" / f"id_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"x{i}.jpg").write_bytes(b"not an image")
    assert main(["pretrain", "byol", "--data", str(tmp_path / "bad"), "--out",
                 str(tmp_path / "run"), *FAST]) == 2
    one_error_line(capsys)


# ---- (5) quiet stderr, outputs named, short runs log ---------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "backbone_ssl.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


NOISE = ("AVX512", "ModuleNotFoundError", "weight_norm", "litlogger", "LeafSpec",
         "module(s) in eval mode")


@pytest.mark.slow
def test_stderr_is_quiet_and_ends_with_our_error(tmp_path):
    data = draw_identity_folder(tmp_path / "data", identities=2, per_identity=8)
    ok = run_cli("pretrain", "dino", "--data", str(data), "--out", str(tmp_path / "r"), *FAST)
    assert ok.returncode == 0, ok.stderr
    for n in NOISE:
        assert n not in ok.stderr, (n, ok.stderr)
    assert str(tmp_path / "r") in ok.stdout.strip().splitlines()[-1]
    bad = run_cli("pretrain", "dino", "--data", str(data), "--out", str(tmp_path / "r2"),
                  "optim.lr=-1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "backbone-ssl: error: config key 'optim.lr' must be >= 0, got -1.0"]
    loud = run_cli("--verbose", "eval", "--encoder", str(tmp_path / "r" / "encoder"), "--train",
                   str(data), "--test", str(data), "--out", str(tmp_path / "ev"))
    assert loud.returncode == 0, loud.stderr
    assert "faiss" in loud.stderr  # --verbose shows what quiet mode hides
    assert str(tmp_path / "ev") in loud.stdout.strip().splitlines()[-1]


def test_short_run_logs_its_final_step_and_plots(tiny_run):
    _, run = tiny_run
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) >= 2 and any(r.split(",")[1] == "1" for r in rows[1:])  # step 1 = last
    assert any((run / "plots").glob("*.png"))


def test_step_progress_bar_counts_max_steps():
    from backbone_ssl.progress import StepProgressBar

    class Bar:
        total, n, disable = 7, 0, False

        def reset(self, total):
            self.total = total

        def refresh(self):
            pass

        def set_description(self, text):
            self.desc = text

    class T:
        max_steps, global_step, current_epoch = 40, 12, 3

    pb = StepProgressBar()
    pb._train_progress_bar = Bar()
    pb.on_train_epoch_start(T())
    assert pb._train_progress_bar.total == 40 and pb._train_progress_bar.n == 12


# ---- (6) unverified weights; never suggest weights_only=False ------------------------------------
def test_encoder_without_sha256_loads_with_a_warning(tiny_run, tmp_path, caplog):
    import shutil

    from backbone_ssl.export import load_encoder

    enc = tmp_path / "enc"
    shutil.copytree(tiny_run[1] / "encoder", enc)
    cfg = json.loads((enc / "config.json").read_text())
    del cfg["backbone_ssl"]["sha256"]
    (enc / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level("WARNING"):
        load_encoder(enc)
    assert any("unverified weights" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("payload", [b"", os.urandom(257), b"PK\x03\x04garbage"])
def test_random_bytes_as_encoder_never_suggest_weights_only_false(tmp_path, capsys, payload):
    bad = tmp_path / "enc.pt"
    bad.write_bytes(payload)
    assert main(["eval", "--encoder", str(bad), "--train", str(tmp_path), "--test",
                 str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys, "refusing to load", "never unpickles")
    assert "weights_only=False" not in line and "weights_only" not in line


def test_pickle_checkpoint_message_is_complete(tmp_path, capsys):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil()}, bad)
    assert main(["export", str(bad), "--out", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys, "pickled objects")
    assert "weights_only" not in line and not (tmp_path / "pwned").exists()
    assert pickle  # imported for the payload's protocol


# ---- search's best.yaml ------------------------------------------------------------------------
def test_best_yaml_drops_the_search_step_budget(tmp_path):
    from backbone_ssl.search import best_config_text

    cfg = tmp_path / "config.yaml"
    cfg.write_text("trainer:\n  max_steps: 40\n  max_epochs: 3\nseed: 1\n")
    text = best_config_text(cfg)
    from omegaconf import OmegaConf

    loaded = OmegaConf.create(text)
    assert loaded.trainer.max_steps == -1 and loaded.trainer.max_epochs == 3 and loaded.seed == 1


def test_user_error_in_a_dataloader_worker_is_still_one_line(tmp_path, capsys):
    for i in range(4):
        d = tmp_path / "bad" / f"id_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"x{i}.jpg").write_bytes(b"not an image")
    fast = [a for a in FAST if not a.startswith("data.num_workers")]
    assert main(["pretrain", "byol", "--data", str(tmp_path / "bad"), "--out",
                 str(tmp_path / "run"), *fast, "data.num_workers=1"]) == 2
    one_error_line(capsys, "no decodable image")


def test_embedding_shows_progress(tmp_path, capsys):
    from backbone_ssl.evaluation.features import extract_features, load_image_folder
    from backbone_ssl.export import random_encoder

    data = draw_identity_folder(tmp_path / "d", identities=2, per_identity=3)
    dataset, _ = load_image_folder(data)
    from backbone_ssl.data.transforms import eval_transform

    dataset.transform = eval_transform(32)
    feats = extract_features(random_encoder("resnet10t", 32), dataset, batch_size=2,
                             progress=True)
    assert feats.shape[0] == 6
    assert "embedding 6 images" in capsys.readouterr().err


def test_failed_eval_leaves_no_out_folder(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--encoder", str(tmp_path / "nope"), "--train", str(tmp_path),
                 "--test", str(tmp_path), "--out", str(out)]) == 2
    one_error_line(capsys, "encoder not found")
    assert not out.exists()
