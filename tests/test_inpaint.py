"""Inpainting pretraining: GAN losses, critics, metrics, end-to-end runs on faces and panels."""

from __future__ import annotations

import csv
import math

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from backbone_ssl import load_encoder
from backbone_ssl.cli import main
from backbone_ssl.config import load_config
from backbone_ssl.errors import UserError
from backbone_ssl.evaluation.image_quality import completion_metrics, hole_psnr, mean_fill
from backbone_ssl.export import load_encoder_bundle, read_checkpoint
from backbone_ssl.methods.inpaint import Inpaint, InpaintConfig
from backbone_ssl.nn.critics import ConvDiscriminator, crop_boxes
from backbone_ssl.nn.gan_losses import (
    discriminator_loss,
    generator_loss,
    gradient_penalty,
)

FAST = ["trainer.enable_progress_bar=false", "data.num_workers=0", "model.arch=resnet10t",
        "data.image_size=32", "data.batch_size=8", "trainer.log_every_n_steps=1",
        "inpaint.decoder_width=8", "inpaint.disc_width=8", "inpaint.local_size=16",
        "inpaint.grid_images=4"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(metrics, key):
    return [float(r[key]) for r in metrics if r.get(key)]


# ---- losses ---------------------------------------------------------------------------------
def test_gan_losses_by_hand():
    hi, lo = torch.full((4,), 10.0), torch.full((4,), -10.0)
    # non-saturating: a confident, correct critic has ~0 loss; a fooled one pays ~20
    assert discriminator_loss("nonsaturating", hi, lo) < 1e-3
    assert abs(float(discriminator_loss("nonsaturating", lo, hi)) - 20.0) < 1e-3
    assert generator_loss("nonsaturating", hi) < 1e-3
    assert abs(float(generator_loss("nonsaturating", lo)) - 10.0) < 1e-3
    # hinge: margins of 1
    assert float(discriminator_loss("hinge", torch.full((3,), 2.0), torch.full((3,), -2.0))) == 0
    assert float(discriminator_loss("hinge", torch.zeros(3), torch.zeros(3))) == 2.0
    assert float(generator_loss("hinge", torch.tensor([1.0, 3.0]))) == -2.0
    # wasserstein: fake - real for the critic, -fake for the generator
    assert float(discriminator_loss("wgan-gp", torch.tensor([3.0]), torch.tensor([1.0]))) == -2.0
    assert float(generator_loss("wgan-gp", torch.tensor([1.0, 3.0]))) == -2.0
    # the generator's loss falls as the critic rates its samples higher, for every kind
    for kind in ("nonsaturating", "hinge", "wgan-gp"):
        assert generator_loss(kind, hi) < generator_loss(kind, lo)
    with pytest.raises(UserError, match="unknown GAN loss"):
        generator_loss("lsgan", hi)


def test_gradient_penalty_of_a_linear_critic_by_hand():
    # critic(x) = <w, x>: the gradient is w everywhere, so the penalty is (|w| - 1)^2
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    gp = gradient_penalty(lambda x: x @ w, real, fake)
    assert abs(float(gp) - 16.0) < 1e-5
    gp.backward()  # the penalty trains the critic: d/dw (|w|-1)^2 = 2(|w|-1) w/|w|
    torch.testing.assert_close(w.grad, torch.tensor([4.8, 6.4]))
    unit = torch.tensor([0.6, 0.8])
    assert float(gradient_penalty(lambda x: x @ unit, real, fake)) < 1e-10


@pytest.mark.parametrize("size", [32, 20, 64])
def test_discriminator_gives_one_score_per_image(size):
    torch.manual_seed(0)
    d = ConvDiscriminator(size, width=4)
    x = torch.randn(3, 3, size, size, requires_grad=True)
    scores = d(x)
    assert scores.shape == (3,)
    # each score depends on its own image only (no batch statistics: WGAN-GP needs that) ...
    torch.testing.assert_close(d(x[1:2]), scores[1:2])
    # ... and on every part of it: the gradient reaches the image's corners and centre
    scores[0].backward()
    g = x.grad[0].abs().sum(0)
    assert x.grad[1:].abs().max() == 0
    for y, xx in ((0, 0), (size - 1, size - 1), (size // 2, size // 2)):
        assert g[max(0, y - 1):y + 2, max(0, xx - 1):xx + 2].sum() > 0, (y, xx)
    other = x.detach().clone()
    other[0] = -other[0]
    assert abs(float(d(other)[0] - scores[0])) > 1e-6  # another image, another score


def test_crop_boxes_takes_the_box_and_keeps_gradients():
    img = torch.zeros(2, 3, 16, 16)
    img[0, :, 4:8, 2:10] = 1.0
    img.requires_grad_(True)
    crops = crop_boxes(img, torch.tensor([[2.0, 4.0, 10.0, 8.0], [0.0, 0.0, 16.0, 16.0]]), 6)
    assert crops.shape == (2, 3, 6, 6)
    assert float(crops[0, :, 1:-1, 1:-1].min()) > 0.99  # inside the box: all ones
    assert float(crops[1].abs().max()) < 1e-6  # the second image is zero
    crops.sum().backward()
    assert float(img.grad[0, :, 4:8, 2:10].sum()) > 0


# ---- metrics ---------------------------------------------------------------------------------
def test_hole_metrics_and_mean_fill_by_hand():
    target = torch.full((1, 3, 16, 16), 0.5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    pred = target + 0.1 * mask  # off by 0.1 in the hole only
    assert abs(float(hole_psnr(pred, target, mask)) - 20.0) < 1e-3
    m = completion_metrics(pred, target, mask)
    assert abs(float(m["hole_l1"]) - 0.1) < 1e-6
    exact = completion_metrics(target, target, mask)
    assert float(exact["ssim"]) > 0.999 and float(exact["hole_l1"]) == 0.0
    assert float(exact["hole_psnr"]) == pytest.approx(100.0)  # capped, not inf
    # mean fill: the hole gets the mean colour of the visible pixels, which stay as they are
    img = torch.rand(2, 3, 16, 16)
    filled = mean_fill(img, mask.expand(2, 1, 16, 16))
    visible = img[:, :, ~mask[0, 0].bool()]
    torch.testing.assert_close(filled[:, :, 8, 8], visible.mean(dim=2))
    torch.testing.assert_close(filled[:, :, 0, 0], img[:, :, 0, 0])


# ---- the module ------------------------------------------------------------------------------
@pytest.mark.parametrize("gan_loss", ["nonsaturating", "hinge", "wgan-gp"])
def test_critic_and_generator_losses_train_the_right_parameters(gan_loss):
    torch.manual_seed(0)
    cfg = load_config(InpaintConfig, "inpaint", overrides=[
        *FAST[2:], f"inpaint.gan_loss={gan_loss}"])
    model = Inpaint(cfg)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    masks = torch.zeros(4, 1, 32, 32)
    masks[..., 8:20, 6:22] = 1
    out = model.complete(images, masks)
    assert out.shape == images.shape and float(out.abs().max()) <= 1.0
    comp = masks * out + (1 - masks) * images
    boxes = torch.tensor([[6.0, 8.0, 22.0, 20.0]]).expand(4, 4)
    d_loss, gp = model.discriminator_step_loss(images, comp, boxes)
    assert math.isfinite(float(d_loss))
    assert (float(gp) > 0) == (gan_loss == "wgan-gp")
    d_loss.backward()
    for critic in (model.global_disc, model.local_disc):
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in critic.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())  # fake was detached
    model.reconstruction_loss(out, images, masks).backward()
    # every encoder parameter learns (the decoder starts from the final features)
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_encoder_input_hides_the_hole():
    cfg = load_config(InpaintConfig, "inpaint", overrides=FAST[2:])
    model = Inpaint(cfg)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[..., :10, :] = 1
    x = model.encoder_input(images, masks)
    assert float(x[..., :10, :].abs().max()) == 0.0
    changed = images.clone()
    changed[..., :10, :] = -images[..., :10, :]
    torch.testing.assert_close(model.encoder_input(changed, masks), x)


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_inpaint_on_faces_writes_the_run_contract(tiny_split, tmp_path):
    train, test = tiny_split
    run = tmp_path / "run"
    assert main(["pretrain", "inpaint", "--data", str(train), "--out", str(run),
                 "trainer.max_steps=4", "inpaint.val_fraction=0.25", *FAST]) == 0
    for rel in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "encoder/config.json",
                "encoder/model.safetensors", "plots/loss.png", "plots/inpaint_epoch1.png"):
        assert (run / rel).is_file(), rel
    metrics = rows(run / "metrics.csv")
    losses = column(metrics, "train/loss")
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)  # one per batch
    assert len(column(metrics, "train/d_loss")) == 4
    # 18 training faces / batch 8 = 2 batches an epoch: held-out metrics after epochs 0 and 1
    for key in ("val/hole_psnr", "val/ssim", "val/hole_l1", "val/psnr",
                "val/meanfill_hole_psnr", "val/meanfill_ssim", "val/meanfill_hole_l1"):
        values = column(metrics, key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    assert all(0 < v < 100 for v in column(metrics, "val/hole_psnr"))
    assert all(-1 <= v <= 1 for v in column(metrics, "val/ssim"))
    # the mean-fill baseline does not depend on training: the same value at every evaluation
    base = column(metrics, "val/meanfill_hole_psnr")
    assert base[0] == pytest.approx(base[1])
    # grid: 3 rows (masked input, completion, target) x grid_images columns
    with Image.open(run / "plots" / "inpaint_epoch1.png") as im:
        assert im.size == (4 * 34 + 2, 3 * 34 + 2)
    # the export is the plain timm backbone, equal to the checkpoint's, and eval accepts it
    enc = load_encoder(str(run / "encoder"))
    assert enc(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items()
             if k.startswith("backbone.")}
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, state[k])
    assert main(["eval", "--encoder", str(run / "encoder"), "--train", str(train),
                 "--test", str(test), "--out", str(tmp_path / "eval"), "--k", "3"]) == 0


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
        tiny_split, tmp_path, capsys, monkeypatch):
    train, _ = tiny_split
    original = Inpaint.reconstruction_loss

    def poisoned(self, out, target, masks):
        loss = original(self, out, target, masks)
        return loss * float("nan") if self.global_step == 2 else loss

    monkeypatch.setattr(Inpaint, "reconstruction_loss", poisoned)
    run = tmp_path / "run"
    rc = main(["pretrain", "inpaint", "--data", str(train), "--out", str(run),
               "trainer.max_steps=5", "trainer.checkpoint_every_n_steps=1", *FAST])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite generator loss" in err[0] and "at step 2" in err[0]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (run / "encoder").exists()


def test_non_finite_critic_loss_is_caught_off_logging_steps_before_the_next_checkpoint(
        tiny_split, tmp_path, capsys, monkeypatch):
    """The losses are checked on the device and read back only at logging steps, checkpoints
    and the end: with logging every 50 steps, a NaN critic loss at step 1 stops the run at the
    step-2 checkpoint, which is not written (last.ckpt stays at step 1)."""
    train, _ = tiny_split
    original = Inpaint.discriminator_step_loss

    def poisoned(self, real, fake, boxes):
        loss, gp = original(self, real, fake, boxes)
        return (loss * float("nan"), gp) if self.global_step == 1 else (loss, gp)

    monkeypatch.setattr(Inpaint, "discriminator_step_loss", poisoned)
    run = tmp_path / "run"
    rc = main(["pretrain", "inpaint", "--data", str(train), "--out", str(run),
               "trainer.max_steps=4", "trainer.checkpoint_every_n_steps=1", *FAST,
               "trainer.log_every_n_steps=50"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite discriminator loss" in err[0] and "at step 1" in err[0]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 1


@pytest.mark.parametrize("override, expected", [
    ("inpaint.min_coverage=0", "min_coverage"),
    ("inpaint.max_coverage=1.0", "never all"),
    ("inpaint.gan_loss=lsgan", "unknown GAN loss"),
    ("inpaint.source=comics", "inpaint.source"),
    ("trainer.gradient_clip_val=1.0", "gradient_clip_val"),
    ("trainer.precision=16-mixed", "16-mixed"),
])
def test_bad_inpaint_config_exits_2_with_one_line(override, expected, tiny_split, tmp_path,
                                                   capsys):
    train, _ = tiny_split
    assert main(["pretrain", "inpaint", "--data", str(train), "--out", str(tmp_path / "r"),
                 override, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


# ---- panels (a `golden prepare` output) --------------------------------------------------------
@pytest.fixture()
def tiny_prep(tmp_path):
    from backbone_ssl.data.golden import prepare
    from backbone_ssl.data.toy_comics import write_toy_comics

    comics = tmp_path / "comics"
    write_toy_comics(comics, books=4, pages=2, seed=0)
    prep = tmp_path / "prep"
    prepare(comics / "raw_panel_images", comics / "face_annotations", prep)
    return prep


def test_panel_holes_match_panel_sequences(tiny_prep):
    from backbone_ssl.data.golden_datasets import PanelSequences
    from backbone_ssl.methods.inpaint_data import PanelHoles

    seqs = PanelSequences(tiny_prep, "all", panel_size=48, mask_value=-1.0)
    holes = PanelHoles(seqs, min_coverage=1e-4, max_coverage=0.99, train=False)
    checked = 0
    for i in range(len(seqs)):
        ref, item = seqs[i], holes[i]
        if item["rescaled"]:
            continue
        mask = item["mask"][0]
        torch.testing.assert_close(mask, ref["mask"])  # the face area is the hole
        visible = ~mask.bool()
        torch.testing.assert_close(item["image"][:, visible], ref["panels"][-1][:, visible])
        assert not torch.equal(item["image"][:, ~visible], ref["panels"][-1][:, ~visible])
        checked += 1
    assert checked >= 5


@pytest.mark.slow
def test_inpaint_on_panels_masks_the_faces_and_holds_out_books(tiny_prep, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "inpaint", "--data", str(tiny_prep), "--out", str(run),
                 "trainer.max_steps=3", "inpaint.val_fraction=0.25", *FAST]) == 0
    metrics = rows(run / "metrics.csv")
    assert column(metrics, "val/hole_psnr") and column(metrics, "val/meanfill_hole_psnr")
    assert "train/mask_rescaled" in metrics[0]
    assert (run / "encoder" / "model.safetensors").is_file()
    assert load_encoder_bundle(run / "encoder").input_size == 32


def test_inpaint_on_a_single_book_is_a_user_error(tiny_prep, tmp_path, capsys):
    import json

    seqs = json.loads((tiny_prep / "sequences.json").read_text())
    one_book = {k: v for k, v in seqs.items() if v[0][0].startswith("0/")}
    (tiny_prep / "sequences.json").write_text(json.dumps(one_book))
    assert main(["pretrain", "inpaint", "--data", str(tiny_prep), "--out", str(tmp_path / "r"),
                 *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one book" in err[0]


# ---- the adversarial path in the real training step --------------------------------------------
class WatchCritics(pl.Callback):
    """Keeps both critics' starting weights and records, for every local-critic call made while
    the critics are frozen (the generator step), the gradient its scores receive."""

    def __init__(self) -> None:
        self.start: dict[str, dict[str, torch.Tensor]] = {}
        self.local_grads: list[torch.Tensor] = []
        self.frozen_calls = 0

    def on_train_start(self, trainer, pl_module) -> None:
        for name in ("global_disc", "local_disc"):
            self.start[name] = {k: v.detach().clone()
                                for k, v in getattr(pl_module, name).state_dict().items()}

        def hook(module, inputs, out):
            if not any(p.requires_grad for p in module.parameters()):  # generator step
                self.frozen_calls += 1
                if out.requires_grad:
                    out.register_hook(lambda g: self.local_grads.append(g.detach().clone()))

        pl_module.local_disc.register_forward_hook(hook)


@pytest.mark.parametrize("gan_loss", ["hinge", "wgan-gp"])
def test_training_steps_update_both_critics_and_the_local_term_reaches_the_generator(
        gan_loss, tiny_split, tmp_path):
    from backbone_ssl.train import pretrain

    train, _ = tiny_split
    watch = WatchCritics()
    pretrain("inpaint", data=str(train), out=str(tmp_path / "run"), callbacks=[watch],
             overrides=[*FAST, "trainer.max_steps=2", "inpaint.val_fraction=0.25",
                        f"inpaint.gan_loss={gan_loss}", "inpaint.adv_weight=0.5"])
    state = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["state_dict"]
    for name, before in watch.start.items():
        changed = [k for k, v in before.items()
                   if not torch.equal(state[f"{name}.{k}"], v)]
        # every weight matrix of both critics moved (each is in the critics' optimiser; a bias
        # can see a zero gradient: under hinge, real and fake terms cancel when all are active)
        weights = [k for k in before if k.endswith("weight")]
        assert weights and set(weights) <= set(changed), (name, set(weights) - set(changed))
    # the generator step scores the completion with the local critic, and that score's term is
    # in the generator loss: its gradient reaches the score (adv_weight x d generator_loss)
    assert watch.frozen_calls == 2
    assert len(watch.local_grads) == 2
    assert all(float(g.abs().sum()) > 0 for g in watch.local_grads)
