"""Exported encoders: one folder, three loaders, identical features; tampering is refused."""

from __future__ import annotations

import json
import pickle

import pytest
import timm
import torch

from backbone_ssl import load_encoder
from backbone_ssl.backbones import create_backbone
from backbone_ssl.errors import UserError
from backbone_ssl.export import (
    export_encoder,
    load_encoder_bundle,
    read_checkpoint,
    resolve_encoder,
    sha256_file,
)

ARCH = "resnet10t"


@pytest.fixture()
def enc_dir(tmp_path):
    torch.manual_seed(0)
    model = create_backbone(ARCH)
    out = export_encoder(model, ARCH, tmp_path / "enc", input_size=48,
                         meta={"method": "dino", "data": "toy", "steps": 3})
    return out, model


def test_export_layout_and_metadata(enc_dir):
    out, _ = enc_dir
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == ARCH
    assert list(cfg["pretrained_cfg"]["input_size"]) == [3, 48, 48]
    assert len(cfg["pretrained_cfg"]["mean"]) == 3 and len(cfg["pretrained_cfg"]["std"]) == 3
    block = cfg["backbone_ssl"]
    assert block["method"] == "dino" and block["steps"] == 3 and block["data"] == "toy"
    assert block["sha256"] == sha256_file(out / "model.safetensors")
    assert {"toolkit_version", "created"} <= set(block)


def test_three_loaders_give_identical_features(enc_dir):
    out, model = enc_dir
    x = torch.randn(2, 3, 48, 48)
    model.eval()
    with torch.no_grad():
        ref = model(x)
        ours = load_encoder(out)(x)
        via_local_dir = timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x)
        via_ckpt = timm.create_model(ARCH, num_classes=0,
                                     checkpoint_path=str(out / "model.safetensors")).eval()(x)
    assert ours.shape == (2, 512)
    for other in (ours, via_local_dir, via_ckpt):
        torch.testing.assert_close(other, ref, rtol=0, atol=0)
    m = timm.create_model(f"local-dir:{out}", pretrained=True)
    data_cfg = timm.data.resolve_data_config(model=m)
    assert data_cfg["input_size"] == (3, 48, 48)


def test_loaded_encoder_is_frozen(enc_dir):
    module = load_encoder(enc_dir[0])
    assert not module.training
    assert not any(p.requires_grad for p in module.parameters())


def test_hash_mismatch_refused(enc_dir):
    out, _ = enc_dir
    cfg = json.loads((out / "config.json").read_text())
    cfg["backbone_ssl"]["sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="sha256"):
        load_encoder(out)


def test_other_arch_names_missing_and_unexpected_keys(enc_dir):
    out, _ = enc_dir
    cfg = json.loads((out / "config.json").read_text())
    cfg["architecture"] = "mobilenetv3_small_050"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="missing keys: .*unexpected keys: "):
        load_encoder(out)


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickles_are_refused_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"state_dict": _Boom()})
    for name in ("evil.ckpt", "evil.pt"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(UserError, match="refusing to load"):
            resolve_encoder(str(tmp_path / name))
    torch.save({"state_dict": {}, "x": _Boom()}, tmp_path / "zip.ckpt")
    with pytest.raises(UserError, match="refusing to load"):
        read_checkpoint(tmp_path / "zip.ckpt")
    fake = tmp_path / "enc"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(payload)
    (fake / "config.json").write_text(json.dumps({"architecture": ARCH}))
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_encoder_bundle(fake)
    assert not (tmp_path / "PWNED").exists()


def test_random_encoder_is_seeded():
    a = resolve_encoder(f"random:{ARCH}", input_size=32, seed=1)
    b = resolve_encoder(f"random:{ARCH}", input_size=32, seed=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.module(x), b.module(x))
    assert a.input_size == 32 and a.meta["method"] == "random"
    with pytest.raises(UserError, match="unknown model.arch"):
        resolve_encoder("random:resnet1800")


def test_export_replaces_existing_folder_atomically(enc_dir, tmp_path):
    out, model = enc_dir
    before = sha256_file(out / "model.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    export_encoder(model, ARCH, out, input_size=48)
    assert sha256_file(out / "model.safetensors") != before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
