"""``downstream cloze``: generate the masked face of the last panel from the panel sequence
(SSuperGAN's face cloze), with the exported encoder as the per-panel CNN embedder.

Model: :class:`~downstream.sequence.PanelSequenceEncoder` (encoder, frozen unless
``model.finetune_encoder``; concat / LSTM / BiLSTM; optional VAE head with a linearly annealed KL
weight) -> :class:`~downstream.gan.DCGANGenerator` (face ``[3,F,F]``) -> two discriminators:
*local* on the face, *global* on the last panel with the face pasted into its box (real: the
true face pasted the same way, so resizing artefacts cannot tell them apart). Loss: the
adversarial terms (``loss.gan``: non-saturating, hinge or WGAN-GP) + ``l1_weight`` x L1 to the
true face + KL.

Training (:mod:`backbone_ssl.nn.training`): ``loss.n_critic`` critic steps per generator step,
each on its own fresh chunk of sequences and freshly generated faces; critics frozen during the
generator step; DiffAugment (``model.diffaugment``) on every critic input.

Decoders (``model.decoder``, ``model.face_latent``; :mod:`downstream.face_model`):

- ``dcgan`` (default): a fresh DCGAN generator;
- ``stylegan``: a StyleGAN2-style generator whose mapping network takes the sequence latent into
  W (fresh, or the EMA G of a ``downstream stylegan`` run named by ``model.face_model``);
- ``face_latent=bigan|vae`` (the roadmap's separate encoding of the face): the masked face has
  its own latent, the frozen encoder of a face-model run (``model.face_model``: ``downstream
  bigan``, or ``vaegan`` / ``introvae``) applied to the true face; the sequence encoder predicts
  it (``loss.latent_weight`` x MSE of ``mu`` to it, plus the losses above) and that run's
  generator decodes it (frozen unless ``model.finetune_face_generator``).

The plain autoencoder variant is ``configs/cloze_autoencoder.yaml``: ``model.vae=false`` and the
adversarial weights 0 (L1 only).

Data: a ``golden prepare`` output; train and test are split by book (held-out books). Metrics on
the test books, with ``z = mu``: PSNR (dB, each image capped at 100), SSIM, L1 on the face, and
KID and FD in a fixed reference encoder's features (not Inception KID/FID).
"""

from __future__ import annotations

import logging

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from backbone_ssl.data.golden_datasets import PanelSequences
from backbone_ssl.errors import UserError
from backbone_ssl.nn.critics import ConvDiscriminator
from backbone_ssl.nn.diffaugment import AugmentedCritic
from backbone_ssl.nn.gan_losses import generator_loss
from backbone_ssl.nn.training import critic_loss, generator_step, train_critic
from downstream.config import ClozeConfig
from downstream.encoder import EncoderInput, encoder_info, load_task_encoder, reference_features
from downstream.face_model import FaceModel, Frozen, StyleDecoder, load_face_model
from downstream.gan import DCGANGenerator
from downstream.metrics import generator_metrics, image_quality
from downstream.runs import (
    FD_ENC_NOTE,
    eval_device,
    eval_progress,
    fit,
    make_trainer,
    plot_training,
    reference_info,
    save_image_grid,
    start_run,
    write_report,
)
from downstream.sequence import PanelSequenceEncoder, kl_divergence, reparameterise
from downstream.stylegan import StyleGenerator

log = logging.getLogger(__name__)


def paste_faces(panels: torch.Tensor, faces: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Resize each face ``[B,3,F,F]`` into its box ``[B,4]`` (``x1,y1,x2,y2``, exclusive ends) of
    ``panels`` ``[B,3,S,S]``; differentiable in ``faces``. Empty boxes leave the panel as is."""
    out = []
    for panel, face, (x1, y1, x2, y2) in zip(panels, faces, boxes.tolist()):
        if x2 <= x1 or y2 <= y1:
            out.append(panel)
            continue
        patch = F.interpolate(face[None], size=(y2 - y1, x2 - x1), mode="bilinear",
                              align_corners=False, antialias=True)[0]
        canvas = panel.clone()
        canvas[:, y1:y2, x1:x2] = patch
        out.append(canvas)
    return torch.stack(out)


def critic_steps(cfg: ClozeConfig) -> int:
    """Critic updates per generator update: ``loss.n_critic``, or 0 when both adversarial
    weights are 0 (the autoencoder preset), so no time goes to critics nothing uses."""
    lc = cfg.loss
    return lc.n_critic if (lc.local_weight > 0 or lc.global_weight > 0) else 0


def build_decoder(cfg: ClozeConfig, face: FaceModel | None) -> torch.nn.Module:
    """The face decoder ``z [B,L] -> [B,3,F,F]``: a face model's generator (frozen unless
    ``model.finetune_face_generator``), a fresh StyleGAN2-style generator whose mapping network
    takes ``z`` into W (``model.decoder=stylegan``), or a fresh DCGAN generator."""
    m, d = cfg.model, cfg.data
    if face is not None:
        return face.generator if m.finetune_face_generator else Frozen(face.generator)
    if m.decoder == "stylegan":
        # mapping lr multiplier 1: the cloze lr is StyleGAN's / 10, and z is a learned code
        return StyleDecoder(StyleGenerator(d.face_size, m.latent_dim, m.style_w_dim,
                                           m.style_mapping_layers, m.style_channels,
                                           mapping_lr_mul=1.0))
    return DCGANGenerator(m.latent_dim, d.face_size, m.gen_channels)


class FaceCloze(pl.LightningModule):
    """Sequence encoder + generator + local/global discriminators (manual optimisation); with a
    face model (``model.face_latent``), also its frozen encoder giving the target latent."""

    def __init__(self, cfg: ClozeConfig, embedder: EncoderInput, n_panels: int,
                 face: FaceModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.automatic_optimization = False
        m, d = cfg.model, cfg.data
        self.seq_encoder = PanelSequenceEncoder(
            embedder, embedder.num_features, n_panels, m.sequence, m.embed_dim, m.hidden_dim,
            m.latent_dim, m.vae)
        self.generator = build_decoder(cfg, face)
        self.face_target = (Frozen(face.target) if face is not None and face.target is not None
                            else None)
        # DiffAugment on every discriminator input (real, fake and penalty interpolates)
        self.local_d = AugmentedCritic(ConvDiscriminator(d.face_size, width=m.disc_channels),
                                       m.diffaugment)
        self.global_d = AugmentedCritic(ConvDiscriminator(d.panel_size, width=m.disc_channels),
                                        m.diffaugment)

    def generate(self, panels: torch.Tensor, sample: bool = True):
        """``panels [B,P,3,S,S]`` -> ``(face [B,3,F,F], mu, logvar)``; ``z = mu`` unless
        ``sample``."""
        mu, logvar = self.seq_encoder(panels)
        z = reparameterise(mu, logvar) if sample else mu
        return self.generator(z), mu, logvar

    @torch.no_grad()
    def target_latent(self, face: torch.Tensor) -> torch.Tensor | None:
        """The face model's latent of the true faces ``[B,3,F,F]`` -> ``[B,L]`` (None without
        ``model.face_latent``)."""
        return None if self.face_target is None else self.face_target(face)

    def kl_weight(self) -> float:
        """Linear KL annealing: 0 -> ``loss.kl_weight`` over ``loss.kl_anneal_steps``."""
        ramp = max(1, self.cfg.loss.kl_anneal_steps)
        batches = self.global_step // (critic_steps(self.cfg) + 1)  # global_step: optimiser steps
        return self.cfg.loss.kl_weight * min(1.0, batches / ramp)

    def training_step(self, batch, batch_idx: int) -> None:
        """The loader draws ``batch_size x n_critic`` sequences: one chunk per critic step (each
        with freshly generated faces), the last chunk also for the generator step."""
        lc = self.cfg.loss
        opt_g, opt_d = self.optimizers()
        n_chunks = max(1, critic_steps(self.cfg))
        chunks = [{k: v[i::n_chunks] for k, v in batch.items()
                   if isinstance(v, torch.Tensor)} for i in range(n_chunks)]
        chunks = [c for c in chunks if len(c["face"])]

        def draw(i: int):
            c = chunks[i]
            with torch.no_grad():
                fake = self.generate(c["panels"])[0]
            last = c["panels"][:, -1]
            return ((c["face"], paste_faces(last, c["face"], c["box"])),
                    (fake, paste_faces(last, fake, c["box"])))

        def d_loss_fn(real, fake):
            return (lc.local_weight * critic_loss(lc.gan, self.local_d, real[0], fake[0],
                                                  lc.gp_weight, lc.r1_weight)
                    + lc.global_weight * critic_loss(lc.gan, self.global_d, real[1], fake[1],
                                                     lc.gp_weight, lc.r1_weight))

        if critic_steps(self.cfg):
            d_loss = train_critic(opt_d, len(chunks), draw, d_loss_fn, self.manual_backward)
        else:  # no adversarial weight (the autoencoder preset): the critics do not train
            d_loss = torch.zeros((), device=self.device)
        c = chunks[-1]
        terms: dict[str, torch.Tensor] = {}
        kl_w = self.kl_weight()

        def g_loss_fn() -> torch.Tensor:
            fake, mu, logvar = self.generate(c["panels"])
            fake_global = paste_faces(c["panels"][:, -1], fake, c["box"])
            terms["adv_local"] = generator_loss(lc.gan, self.local_d(fake))
            terms["adv_global"] = generator_loss(lc.gan, self.global_d(fake_global))
            terms["l1"] = (fake - c["face"]).abs().mean()
            terms["kl"] = (kl_divergence(mu, logvar) if logvar is not None
                           else fake.new_zeros(()))
            target = self.target_latent(c["face"])
            terms["latent"] = ((mu - target).pow(2).mean() if target is not None
                               else fake.new_zeros(()))
            return (lc.local_weight * terms["adv_local"] + lc.global_weight * terms["adv_global"]
                    + lc.l1_weight * terms["l1"] + kl_w * terms["kl"]
                    + lc.latent_weight * terms["latent"])

        g_loss = generator_step(opt_g, g_loss_fn, [opt_d], self.manual_backward)
        self.log_dict({"train/d_loss": d_loss, "train/g_loss": g_loss,
                       "train/g_adv_local": terms["adv_local"].detach(),
                       "train/g_adv_global": terms["adv_global"].detach(),
                       "train/l1": terms["l1"].detach(), "train/kl": terms["kl"].detach(),
                       "train/latent": terms["latent"].detach(),
                       "train/kl_weight": kl_w}, prog_bar=False)
        self.log("train/l1_bar", terms["l1"].detach(), prog_bar=True, logger=False)

    def configure_optimizers(self):
        o = self.cfg.optim
        kw = {"betas": (o.beta1, o.beta2), "weight_decay": o.weight_decay}
        embedder = self.seq_encoder.embedder
        enc_ids = {id(p) for p in embedder.parameters()}
        g_params = [p for p in (*self.seq_encoder.parameters(), *self.generator.parameters())
                    if id(p) not in enc_ids and p.requires_grad]
        groups = [{"params": g_params, "lr": o.lr}]
        if self.cfg.model.finetune_encoder:
            groups.append({"params": list(embedder.parameters()), "lr": o.encoder_lr})
        d_params = [*self.local_d.parameters(), *self.global_d.parameters()]
        return [torch.optim.Adam(groups, **kw), torch.optim.Adam(d_params, lr=o.lr, **kw)]


def load_sequences(cfg: ClozeConfig, split: str) -> PanelSequences:
    """One split of the prepare output; missing panel files are an error unless
    ``data.skip_missing_panels``."""
    d = cfg.data
    ds = PanelSequences(d.path, split=split, test_fraction=d.test_fraction,
                        panel_size=d.panel_size, face_size=d.face_size, mask_value=d.mask_value,
                        return_mask=True, seed=cfg.seed)
    missing = ds.skipped.get("missing", 0)
    if missing and not d.skip_missing_panels:
        raise UserError(
            f"{missing} {split} sequences in {d.path}/sequences.json name panel files missing "
            f"under {ds.panels_root} (examples in the warning above): restore the panels, re-run "
            "`golden prepare`, or set data.skip_missing_panels=true")
    return ds


@torch.no_grad()
def evaluate(model: FaceCloze, test: PanelSequences, cfg: ClozeConfig, device: torch.device):
    """Generate the held-out faces with ``z = mu``; returns ``(metrics, batches)`` where
    ``batches`` holds the first items (panels, fake, true) for the sample grid."""
    n = min(len(test), cfg.metrics.max_eval)
    loader = DataLoader(Subset(test, range(n)), batch_size=cfg.data.batch_size, shuffle=False,
                        num_workers=cfg.data.num_workers)
    model.eval().to(device)
    fakes, reals, panels, latent_se = [], [], [], []
    for batch in eval_progress(loader, f"{n} held-out cloze sequences"):
        fake, mu, _ = model.generate(batch["panels"].to(device), sample=False)
        target = model.target_latent(batch["face"].to(device))
        if target is not None:
            latent_se.append((mu - target).pow(2).mean(1).cpu())
        fakes.append(fake.cpu())
        reals.append(batch["face"])
        if sum(len(p) for p in panels) < cfg.metrics.grid_rows:
            panels.append(batch["panels"])
    model.cpu()
    fake, real = torch.cat(fakes), torch.cat(reals)
    metrics = image_quality(fake, real)
    ref = reference_features(cfg.metrics.ref_encoder, cfg.metrics.ref_seed,
                             cfg.data.face_size).to(device)
    mc = cfg.metrics
    metrics.update(generator_metrics(ref, fake, real, mc.pca_dim, mc.kid_subset_size,
                                     mc.kid_subsets))
    if latent_se:  # how close the predicted latent is to the face model's latent of the truth
        metrics["latent_mse"] = float(torch.cat(latent_se).mean())
    metrics["eval_sequences"] = n
    return metrics, (torch.cat(panels), fake, real)


def sample_grid(panels: torch.Tensor, fake: torch.Tensor, real: torch.Tensor, rows: int,
                path) -> None:
    """Rows: context panels, masked panel, generated face, true face."""
    p = panels.shape[1]
    size = panels.shape[-1]

    def fit_side(x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == size:
            return x
        return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                             antialias=True)[0]

    grid = [[*panels[i, :-1], panels[i, -1], fit_side(fake[i]), fit_side(real[i])]
            for i in range(min(rows, len(panels)))]
    titles = [*(f"context {j + 1}" for j in range(p - 1)), "masked", "generated", "true"]
    save_image_grid(grid, titles, path)


def run_cloze(cfg: ClozeConfig, encoder_spec: str, run_dir: str) -> dict:
    """Train the face-cloze model on the training books, evaluate on the held-out books."""
    d, m = cfg.data, cfg.model
    pl.seed_everything(cfg.seed, workers=True)
    encoder = load_task_encoder(encoder_spec, task_size=d.panel_size, what="panels",
                                size_key="data.panel_size", resize=d.resize_to_encoder,
                                seed=cfg.seed)
    train, test = load_sequences(cfg, "train"), load_sequences(cfg, "test")
    if len(test) < 2:
        raise UserError(f"only {len(test)} held-out sequence(s) in {d.path}: need 2+ for FD-enc; "
                        "raise data.test_fraction or add books")
    train_set = train if d.max_sequences is None else Subset(train, range(min(len(train),
                                                                              d.max_sequences)))
    n_panels = int(train[0]["panels"].shape[0])
    face = None
    if m.face_latent != "none" or m.face_model:
        kind = m.face_latent if m.face_latent != "none" else "stylegan"
        face = load_face_model(m.face_model, kind, m.latent_dim, d.face_size)
    run = start_run(run_dir, cfg)
    embedder = EncoderInput(encoder, finetune=m.finetune_encoder, resize=d.resize_to_encoder)
    model = FaceCloze(cfg, embedder, n_panels, face)
    per_step = d.batch_size * max(1, critic_steps(cfg))  # fresh sequences per critic step
    loader = DataLoader(train_set, batch_size=min(per_step, len(train_set)), shuffle=True,
                        drop_last=len(train_set) > per_step, num_workers=d.num_workers)
    budget = fit(make_trainer(cfg, run, critic_steps(cfg) + 1), model, loader, cfg, run)
    metrics, (panels, fake, real) = evaluate(model, test, cfg, eval_device(cfg))
    plots = plot_training(run, {"loss": ("train/d_loss", "train/g_loss"),
                                "generator_terms": ("train/g_adv_local", "train/g_adv_global",
                                                    "train/l1"),
                                "kl": ("train/kl", "train/kl_weight"),
                                **({"latent": ("train/latent",)} if face is not None
                                   and face.target is not None else {})})
    sample_grid(panels, fake, real, cfg.metrics.grid_rows, run / "plots" / "samples.png")
    plots.append("samples.png")
    train_books, test_books = sorted(set(train.books())), sorted(set(test.books()))
    report = {
        "task": "cloze",
        "encoder": encoder_info(encoder_spec, encoder, frozen=not m.finetune_encoder),
        "data": {"path": str(d.path), "train_sequences": len(train_set),
                 "test_sequences": len(test), "train_books": len(train_books),
                 "test_books": len(test_books), "panels_per_sequence": n_panels,
                 "panel_size": d.panel_size, "face_size": d.face_size,
                 "skipped_missing": int(train.skipped.get("missing", 0)
                                        + test.skipped.get("missing", 0))},
        "model": {"sequence": m.sequence, "vae": m.vae, "loss": cfg.loss.gan,
                  "decoder": m.decoder, "face_latent": m.face_latent,
                  **({"face_model": face.info()} if face is not None else {})},
        "budget": {**budget, "batch_size": d.batch_size},
        "metrics": metrics,
        "reference": reference_info(cfg.metrics),
        "plots": plots,
    }
    notes = [("Metrics on the held-out books' sequences, generated with z = mu. PSNR in dB on "
              "[0, 1] images, each image capped at 100 dB; L1 in [-1, 1] units."), FD_ENC_NOTE]
    if face is not None and face.target is not None:
        notes.append(f"Separate face encoding: the sequence encoder predicts the {face.task} "
                     "face model's latent of the true face (latent_mse on the held-out books) "
                     "and that model's generator decodes it.")
    decoder = "StyleGAN2" if m.decoder == "stylegan" else "DCGAN"
    return write_report(run, report, f"Face cloze (CNN-LSTM + {decoder})", notes)
