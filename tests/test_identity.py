"""pretrain identity: ArcFace/CosFace (pytorch-metric-learning) on labelled identity folders."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning.losses import ArcFaceLoss, CosFaceLoss

from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.errors import UserError
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.methods import get_method
from backbone_ssl.methods.base import SSLMethod
from backbone_ssl.methods.supervised import SupervisedMethod

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1"]


def build(train, *overrides):
    cls = get_method("identity")
    return cls(load_config(cls.config_cls, "identity", None, list(overrides),
                           data__path=str(train)))


def test_loss_choice_classes_and_class_weights_in_the_optimiser(tiny_split):
    train, _ = tiny_split
    model = build(train, "model.arch=resnet10t")
    assert isinstance(model, SupervisedMethod) and not isinstance(model, SSLMethod)
    assert isinstance(model.criterion, ArcFaceLoss)
    assert model.criterion.W.shape == (model.feature_dim, 4)  # 4 identities in tiny_split
    assert model.classes == ["id_0", "id_1", "id_2", "id_3"]
    params = [p for g in model.configure_optimizers()["optimizer"].param_groups
              for p in g["params"]]
    assert any(p is model.criterion.W for p in params)
    assert isinstance(build(train, "model.arch=resnet10t", "identity.loss=cosface").criterion,
                      CosFaceLoss)
    with pytest.raises(UserError, match="identity.loss"):
        build(train, "identity.loss=triplet")


def test_one_identity_folder_is_refused(tmp_path, tiny_split, capsys):
    train, _ = tiny_split
    flat = train / "id_0"  # images directly: one class
    assert main(["pretrain", "identity", "--data", str(flat), "--out", str(tmp_path / "r"),
                 *FAST]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_model_weights_fine_tunes_an_exported_encoder(tiny_split, tmp_path):
    from backbone_ssl.backbones import create_backbone
    from backbone_ssl.export import export_encoder

    train, _ = tiny_split
    torch.manual_seed(3)
    enc = export_encoder(create_backbone("resnet10t"), "resnet10t", tmp_path / "enc",
                         input_size=32)
    model = build(train, "model.arch=resnet10t", f"model.weights={enc}")
    want = load_encoder_bundle(enc).module.state_dict()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, want[k]), k


@pytest.mark.slow
def test_pretrain_identity_trains_exports_and_resumes(tiny_split, tmp_path):
    train, test = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run),
                 "trainer.max_steps=2", f"data.val_train={train}", f"data.val_test={test}",
                 *FAST]) == 0
    first = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert first["global_step"] == 2
    init = build(train, "model.arch=resnet10t").criterion.W  # seed 0, as the run started
    assert not torch.equal(first["state_dict"]["criterion.W"], init)  # class centres learnt
    enc = load_encoder_bundle(run / "encoder")
    assert enc.meta["method"] == "identity" and enc.meta["network"] == "student"
    state = {k[len("backbone."):]: v for k, v in first["state_dict"].items()
             if k.startswith("backbone.")}
    for k, v in enc.module.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert (run / "plots" / "loss.png").is_file()
    assert main(["pretrain", "identity", "--data", str(train), "--out", str(run), "--resume",
                 "trainer.max_steps=4"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4
