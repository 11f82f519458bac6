"""lightly's contrastive / redundancy-reduction methods on the shared base: training moves the
weights with a finite loss, the export reproduces the backbone, resume continues, MoCo's queue
fills, and a constant embedding scores the declared collapse loss."""

from __future__ import annotations

import math

import pytest
import torch

from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.methods import METHODS

NEW = ["simclr", "mocov2", "vicreg", "barlowtwins", "nnclr"]
FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1"]
SMALL = {"simclr": ["simclr.proj_hidden_dim=32"], "mocov2": ["mocov2.memory_bank_size=16"],
         "vicreg": ["vicreg.proj_hidden_dim=32", "vicreg.proj_out_dim=32"],
         "barlowtwins": ["barlowtwins.proj_hidden_dim=32", "barlowtwins.proj_out_dim=32"],
         "nnclr": ["nnclr.proj_hidden_dim=32", "nnclr.proj_out_dim=32", "nnclr.pred_hidden_dim=32",
                   "nnclr.memory_bank_size=16"]}


def build(method: str, *extra: str):
    cls = METHODS[method]
    cfg = load_config(cls.config_cls, method, None, ["model.arch=resnet10t", *SMALL[method],
                                                     *extra])
    torch.manual_seed(0)
    return cls(cfg)


@pytest.mark.parametrize("method", NEW)
def test_steps_change_the_weights_with_finite_loss(method):
    model = build(method)
    torch.manual_seed(1)
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.SGD([p for m in model.trainable_modules() for p in m.parameters()], lr=0.05)
    model.train()
    losses = []
    for _ in range(3):
        loss, emb = model.ssl_step(views)
        assert torch.isfinite(loss) and emb.shape == (8, model.feature_dim)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    changed = [k for k, v in model.backbone.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    if method not in ("mocov2", "nnclr"):  # queue / support set change between steps
        assert losses[-1] < losses[0]


def test_mocov2_memory_bank_fills_with_keys():
    model = build("mocov2")
    bank = model.criterion.memory_bank
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    model.train()
    model.ssl_step(views)
    model.ssl_step(views)
    assert bank.bank.shape == (16, 128)
    assert int(bank.bank_ptr) == 16 % 16  # 2 x 8 keys written: wrapped around once
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(16), atol=1e-5)  # keys, not init


def test_nnclr_positive_is_a_support_set_neighbour():
    """NNCLR swaps each projection for its nearest neighbour among stored past projections."""
    model = build("nnclr")
    model.train()
    views = [torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)]
    model.ssl_step(views)
    model.ssl_step(views)  # 16 projections of view 1 written: the support set is full
    bank = model.memory_bank.bank.detach().clone()  # [N, P]: one stored projection a row
    with torch.no_grad():  # no optimiser step: the same weights give the same projections
        z1 = model.projection_head(model.backbone(views[1]))
    assert torch.allclose(bank, torch.cat([z1, z1]), atol=1e-5)  # real projections, not init
    z = torch.randn(5, 32)
    nn = model.memory_bank(z, update=False)
    unit = torch.nn.functional.normalize
    expected = bank[(unit(z, dim=1) @ unit(bank, dim=1).T).argmax(dim=1)]
    assert torch.allclose(nn, expected, atol=1e-6)


@pytest.mark.parametrize("method", NEW)
def test_constant_embedding_scores_the_collapse_loss(method):
    model = build(method)
    model.cfg.data.batch_size = 8
    expected = model.collapse_value()
    if expected is None:
        assert method in ("barlowtwins", "mocov2")
        return
    z = torch.ones(8, 32)
    loss = model.criterion(z, z)
    assert math.isclose(loss.item(), expected, rel_tol=1e-4)


@pytest.mark.parametrize("method", NEW)
def test_pretrain_export_and_resume(method, tiny_split, tmp_path):
    train, test = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", method, "--data", str(train), "--out", str(run),
                 "trainer.max_steps=2", f"data.val_train={train}", f"data.val_test={test}",
                 *FAST, *SMALL[method]]) == 0
    enc = load_encoder_bundle(run / "encoder")
    assert enc.meta["method"] == method and enc.meta["steps"] == 2
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("backbone.")}
    model = METHODS[method](load_config(METHODS[method].config_cls, method, None,
                                        [*FAST, *SMALL[method]]))
    model.backbone.load_state_dict(state)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.module(x), model.backbone(x))
    assert main(["pretrain", method, "--out", str(run), "--resume", "trainer.max_steps=3"]) == 0
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 3


def test_byol_predictor_lr_factor_gives_the_predictor_its_own_scheduled_lr():
    from backbone_ssl.errors import UserError

    cls = METHODS["byol"]
    plain = cls(load_config(cls.config_cls, "byol", None, ["model.arch=resnet10t",
                                                           "optim.lr=0.002"]))
    assert {g["lr"] for g in plain.parameter_groups(0.002)} == {0.002}
    byol = cls(load_config(cls.config_cls, "byol", None, ["model.arch=resnet10t",
                                                          "optim.lr=0.002",
                                                          "byol.pred_lr_factor=10"]))
    groups = byol.parameter_groups(0.002)
    pred = {id(p) for p in byol.prediction_head.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= pred or not ids & pred  # a group is all predictor or no predictor
        assert g["lr"] == pytest.approx(0.02 if ids <= pred else 0.002)
    covered = set().union(*({id(p) for p in g["params"]} for g in groups))
    trainable = {id(p) for m in byol.trainable_modules() for p in m.parameters()}
    assert covered == trainable  # every trainable parameter once, the EMA target in none
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    with pytest.raises(UserError, match="pred_lr_factor"):
        load_config(cls.config_cls, "byol", None, ["byol.pred_lr_factor=0"])


def test_koleo_weight_adds_the_spreading_term_on_backbone_features():
    from lightly.loss import KoLeoLoss

    from backbone_ssl.errors import UserError

    emb = torch.randn(16, 512, generator=torch.Generator().manual_seed(0))
    loss = torch.tensor(1.5)
    off = build("simclr")
    total, terms = off.add_regularisers(loss, emb)
    assert terms == {} and total is loss  # default: the method's own loss, untouched
    on = build("simclr", "ssl.koleo_weight=0.5")
    total, terms = on.add_regularisers(loss, emb)
    assert torch.allclose(terms["koleo"], KoLeoLoss()(emb))
    assert torch.allclose(total, loss + 0.5 * KoLeoLoss()(emb))
    clumped = emb[:1].repeat(16, 1) + 0.01 * emb  # 16 near-copies: nearest neighbours close
    assert on.add_regularisers(loss, clumped)[0] > total
    for method in ("dino", "byol"):  # every SSL method has the section
        cls = METHODS[method]
        assert load_config(cls.config_cls, method, None, ["ssl.koleo_weight=0.1"]).ssl.\
            koleo_weight == 0.1
    with pytest.raises(UserError, match="ssl.koleo_weight"):
        load_config(METHODS["simclr"].config_cls, "simclr", None, ["ssl.koleo_weight=-1"])
    with pytest.raises(UserError):  # supervised methods have no ssl section to ignore
        load_config(METHODS["identity"].config_cls, "identity", None, ["ssl.koleo_weight=0.1"])
