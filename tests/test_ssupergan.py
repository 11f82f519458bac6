"""SSuperGAN export: efficientnet_pytorch loads our weights strictly and gives our features."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from backbone_ssl.backbones import create_backbone
from backbone_ssl.cli import main
from backbone_ssl.errors import UserError
from backbone_ssl.export import export_encoder
from backbone_ssl.ssupergan import SSUPERGAN_PREFIX, export_ssupergan

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
SIZE = 64


def _perturb_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics so the comparison exercises every buffer."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssg")
    torch.manual_seed(0)
    model = create_backbone("tf_efficientnet_b0")
    _perturb_bn(model)
    enc = export_encoder(model, "tf_efficientnet_b0", root / "enc", input_size=SIZE,
                         meta={"method": "dino", "steps": 5})
    out = export_ssupergan(enc, root / "ssg")
    return model.eval(), out


def _reference(state: dict, image_size: int = SIZE):
    net = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", image_size=image_size)
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    assert missing == ["_fc.bias", "_fc.weight"], missing
    assert unexpected == []
    state = {**state, "_fc.weight": own["_fc.weight"], "_fc.bias": own["_fc.bias"]}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _features(net, x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(net.extract_features(x), 1).flatten(1)


def test_files_and_sidecar(exported):
    _, out = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "efficientnet_b0.pth", "efficientnet_b0.safetensors",
                     "ssupergan.json", "ssupergan_embedder.pth",
                     "ssupergan_embedder.safetensors"]
    side = json.loads((out / "ssupergan.json").read_text())
    assert side["arch"] == "tf_efficientnet_b0"
    assert side["efficientnet_pytorch"] == "efficientnet-b0"
    assert side["input_size"] == SIZE
    norm = side["normalisation"]
    assert norm["ssupergan_feeds"]["mean"] == [0.5] * 3 and norm["conversion_needed"] is True
    assert norm["weights_expect"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    readme = (out / "README.md").read_text()
    assert 'torch.load("efficientnet_b0.pth", weights_only=True)' in readme
    assert "model.seq_encoder.embedder.model.load_state_dict(state" in readme


def test_efficientnet_pytorch_features_match(exported):
    model, out = exported
    bare = torch.load(out / "efficientnet_b0.pth", weights_only=True)
    net = _reference(bare)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = _features(net, x)
        # SSuperGAN's from_pretrained builds for 224 px: same padding for sides divisible by 32
        theirs_224 = _features(_reference(bare, image_size=224), x)
    assert ours.shape == theirs.shape == (3, 1280)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(theirs_224, ours, atol=1e-4, rtol=0)


def test_all_four_files_hold_the_same_tensors(exported):
    _, out = exported
    bare_pth = torch.load(out / "efficientnet_b0.pth", weights_only=True)
    bare_st = load_file(str(out / "efficientnet_b0.safetensors"))
    wrapped_pth = torch.load(out / "ssupergan_embedder.pth", weights_only=True)
    wrapped_st = load_file(str(out / "ssupergan_embedder.safetensors"))
    assert set(wrapped_pth) == {"model_state_dict"}
    assert list(bare_pth)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert bare_pth["_bn0.num_batches_tracked"].item() == 7
    for key, value in bare_pth.items():
        assert torch.equal(bare_st[key], value)
        assert torch.equal(wrapped_pth["model_state_dict"][SSUPERGAN_PREFIX + key], value)
        assert torch.equal(wrapped_st[SSUPERGAN_PREFIX + key], value)
    assert len(wrapped_st) == len(bare_pth)


def test_non_tf_arch_refused(tmp_path):
    enc = export_encoder(create_backbone("efficientnet_b0"), "efficientnet_b0", tmp_path / "e",
                         input_size=SIZE)
    with pytest.raises(UserError, match="tf_efficientnet_b0..b7"):
        export_ssupergan(enc, tmp_path / "out")
    assert main(["export", str(enc), "--out", str(tmp_path / "o2"), "--format", "ssupergan"]) == 2
    assert not (tmp_path / "o2").exists()
