"""export.network: DINO exports (and monitors) its EMA teacher, BYOL its online network;
``export --network`` overrides; a network a method lacks is refused with exit 2."""

from __future__ import annotations

import pytest
import torch

from backbone_ssl.cli import main
from backbone_ssl.export import load_encoder_bundle, read_checkpoint

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1",
        "trainer.max_steps=2"]


def prefixed(ckpt: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def assert_same(enc_dir, state: dict[str, torch.Tensor]) -> None:
    exported = load_encoder_bundle(enc_dir).module.state_dict()
    assert exported.keys() == state.keys()
    for k, v in exported.items():
        assert torch.equal(v, state[k]), k


def differs(enc_dir, state: dict[str, torch.Tensor]) -> bool:
    exported = load_encoder_bundle(enc_dir).module.state_dict()
    return any(not torch.equal(v, state[k]) for k, v in exported.items())


@pytest.mark.slow
def test_dino_exports_its_teacher_and_export_network_overrides(tiny_split, tmp_path, capsys):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "dino", "--data", str(train), "--out", str(run), *FAST,
                 "dino.n_local_views=0", "dino.momentum_start=0.5"]) == 0
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_path)
    teacher, student = prefixed(ckpt, "teacher_backbone."), prefixed(ckpt, "backbone.")
    assert_same(run / "encoder", teacher)  # pretrain's own export: the teacher
    assert differs(run / "encoder", student)
    assert load_encoder_bundle(run / "encoder").meta["network"] == "teacher"
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "t")]) == 0
    assert_same(tmp_path / "t", teacher)
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "s"),
                 "--network", "student"]) == 0
    assert_same(tmp_path / "s", student)
    # a run whose config says export.network=student exports the student
    run2 = tmp_path / "run2"
    assert main(["pretrain", "dino", "--data", str(train), "--out", str(run2), *FAST,
                 "dino.n_local_views=0", "export.network=student"]) == 0
    assert_same(run2 / "encoder", prefixed(read_checkpoint(run2 / "checkpoints/last.ckpt"),
                                           "backbone."))


@pytest.mark.slow
def test_byol_exports_online_and_supervised_methods_have_no_teacher(tiny_split, tmp_path,
                                                                    capsys):
    train, _ = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(run), *FAST,
                 "byol.momentum_start=0.5"]) == 0
    ckpt_path = run / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_path)
    assert_same(run / "encoder", prefixed(ckpt, "backbone."))
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "t"),
                 "--network", "teacher"]) == 0
    assert_same(tmp_path / "t", prefixed(ckpt, "backbone_momentum."))
    capsys.readouterr()
    # identity has one network: teacher is refused in the config and on the command line
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(tmp_path / "i"),
                 *FAST, "export.network=teacher"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'teacher' does not exist for method 'identity'" in err[0]
    assert not (tmp_path / "i").exists()  # refused before anything was written
    assert main(["pretrain", "byol", "--data", str(train), "--out", str(tmp_path / "b"),
                 *FAST, "export.network=ema"]) == 2
    assert "not one of teacher, student" in capsys.readouterr().err


def test_online_knn_embeds_the_exported_network(monkeypatch, tiny_split):
    from backbone_ssl import monitors
    from backbone_ssl.config import load_config
    from backbone_ssl.methods import get_method

    train, test = tiny_split
    seen = []

    def fake_embed(enc, dataset, device=None):
        seen.append(enc.module)
        return torch.nn.functional.normalize(torch.randn(len(dataset), 4), dim=1)

    monkeypatch.setattr(monitors, "embed_dataset", fake_embed)
    monitor = monitors.OnlineKNN(str(train), str(test), image_size=32, k=3)
    for network, attr in (("teacher", "teacher_backbone"), ("student", "backbone")):
        cls = get_method("dino")
        cfg = load_config(cls.config_cls, "dino", None,
                          ["model.arch=resnet10t", "dino.output_dim=64",
                           f"export.network={network}"], data__path=str(train))
        model = cls(cfg)
        seen.clear()
        monitor.measure(model)
        assert len(seen) == 2 and all(m is getattr(model, attr) for m in seen)
