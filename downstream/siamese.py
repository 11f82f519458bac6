"""``downstream siamese``: an identity head on the encoder, trained with a contrastive loss on
same / different identity pairs, reported as face verification (and iCartoonFace rank-1).

Contrastive loss: Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
Mapping", CVPR 2006: ``same * d^2 + (1 - same) * max(0, margin - d)^2`` on the L2 distance ``d``
of L2-normalised embeddings.

Data: identity folders ``ROOT/<identity>/<image>`` or an iCartoonFace root (its training
identities). Splits (``data.split``):

- ``identity`` (default): identities are partitioned into train / val / test, so verification is
  measured on people the head never saw (the open-set protocol of face verification);
- ``image``: every identity appears in every split, with disjoint images (closed set).

Pairs are drawn (seeded) inside one split; a pair never joins an image with itself. The
threshold on cosine similarity is chosen on the validation pairs (best accuracy) and applied to
the test pairs. With a frozen encoder the features are computed once and only the head trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from backbone_ssl.data.datasets import ImageFolderDataset, resolve_image_root, scan_decodable
from backbone_ssl.data.signed import signed_transform
from backbone_ssl.errors import UserError
from backbone_ssl.export import Encoder
from downstream.config import SiameseConfig
from downstream.encoder import EncoderInput, encoder_info, load_task_encoder
from downstream.metrics import roc_auc, roc_points, verification
from downstream.runs import (
    eval_device,
    eval_progress,
    fit,
    make_trainer,
    plot_training,
    start_run,
    write_report,
)

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


# ---- splits and pairs -------------------------------------------------------------------------
def split_train_val_test(labels: np.ndarray, split: str, val_fraction: float,
                         test_fraction: float, seed: int, where: str = "data"
                         ) -> dict[str, np.ndarray]:
    """Image indices of train / val / test, split by ``identity`` or by ``image`` (seeded)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    if len(ids) < 2:
        raise UserError(f"siamese pairs need at least 2 identities, {where} has {len(ids)}: "
                        "give a folder of identity sub-folders ROOT/<identity>/<image>")
    rng = np.random.default_rng(seed)
    if split == "identity":
        if len(ids) < 6:
            raise UserError(f"data.split=identity needs at least 6 identities (2 per split), "
                            f"{where} has {len(ids)}: add identities or set data.split=image")
        perm = rng.permutation(ids)
        n_test = max(2, round(test_fraction * len(ids)))
        n_val = max(2, round(val_fraction * len(ids)))
        groups = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val],
                  "train": perm[n_test + n_val:]}
        if len(groups["train"]) < 2:
            raise UserError(f"data.split=identity leaves {len(groups['train'])} training "
                            f"identities in {where}: lower data.val_fraction/test_fraction")
        return {k: np.flatnonzero(np.isin(labels, v)) for k, v in groups.items()}
    out: dict[str, list[int]] = {k: [] for k in SPLIT_NAMES}
    for ident in ids:
        idx = rng.permutation(np.flatnonzero(labels == ident))
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(val_fraction * len(idx)))
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test:n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val:].tolist()
    return {k: np.asarray(sorted(v), dtype=np.int64) for k, v in out.items()}


def sample_pairs(labels: np.ndarray, indices: np.ndarray, n_pairs: int,
                 positive_fraction: float, seed: int, what: str) -> np.ndarray:
    """``[n_pairs, 3]`` int64 rows ``(image a, image b, same)`` drawn inside ``indices``.

    Positives: a uniformly drawn identity with >= 2 images, then two *different* images of it.
    Negatives: two different identities, one image each. No pair joins an image with itself.
    """
    labels = np.asarray(labels)
    by_id: dict[int, np.ndarray] = {}
    for i in indices:
        by_id.setdefault(int(labels[i]), []).append(int(i))  # type: ignore[arg-type]
    by_id = {k: np.asarray(v) for k, v in by_id.items()}
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    ids = list(by_id)
    if len(ids) < 2 or not multi:
        raise UserError(f"cannot draw {what} pairs: the {what} split has {len(ids)} identities "
                        f"and {len(multi)} with 2+ images (need 2+ identities, one with 2+ "
                        "images): add images or change data.split / fractions")
    rng = np.random.default_rng(seed)
    n_pos = int(round(n_pairs * positive_fraction))
    rows = np.empty((n_pairs, 3), dtype=np.int64)
    for r in range(n_pairs):
        if r < n_pos:
            members = by_id[multi[rng.integers(len(multi))]]
            a, b = rng.choice(members, size=2, replace=False)
            rows[r] = (a, b, 1)
        else:
            ia, ib = rng.choice(len(ids), size=2, replace=False)
            rows[r] = (rng.choice(by_id[ids[ia]]), rng.choice(by_id[ids[ib]]), 0)
    return rows[rng.permutation(n_pairs)]


class PairDataset(Dataset):
    """Items ``(x_a, x_b, same)`` where ``x`` rows come from ``bank`` (features ``[N,D]`` or a
    dataset of images ``[3,S,S]``)."""

    def __init__(self, bank: Any, pairs: np.ndarray) -> None:
        self.bank, self.pairs = bank, torch.as_tensor(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        a, b, same = self.pairs[i].tolist()
        return self._get(a), self._get(b), torch.tensor(float(same))

    def _get(self, i: int) -> torch.Tensor:
        item = self.bank[i]
        return item[0] if isinstance(item, tuple) else item


# ---- model ------------------------------------------------------------------------------------
def contrastive_loss(dist: torch.Tensor, same: torch.Tensor, margin: float) -> torch.Tensor:
    """Hadsell et al. 2006: ``mean(same * d^2 + (1 - same) * relu(margin - d)^2)``; ``[B]`` in."""
    return (same * dist.pow(2) + (1 - same) * F.relu(margin - dist).pow(2)).mean()


class IdentityHead(nn.Module):
    """MLP ``[B,D] -> [B,embed_dim]``, L2-normalised."""

    def __init__(self, in_dim: int, hidden_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim),
                                 nn.ReLU(True), nn.Linear(hidden_dim, embed_dim))
        self.num_features = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class SiameseModel(pl.LightningModule):
    """Head (and, when fine-tuning, the encoder) trained on pairs; ``embed`` gives ``[B,E]``."""

    def __init__(self, cfg: SiameseConfig, head: IdentityHead,
                 encoder: EncoderInput | None) -> None:
        super().__init__()
        self.cfg, self.head, self.encoder = cfg, head, encoder

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[B,D]`` (frozen) or images ``[B,3,S,S]`` (fine-tuning) -> ``[B,E]``."""
        return self.head(x if self.encoder is None else self.encoder(x))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        xa, xb, same = batch
        dist = (self.embed(xa) - self.embed(xb)).norm(dim=1)
        loss = contrastive_loss(dist, same, self.cfg.loss.margin)
        self.log("train/loss", loss, prog_bar=True)
        with torch.no_grad():
            pos, neg = same > 0.5, same < 0.5
            if pos.any():
                self.log("train/pos_dist", dist[pos].mean())
            if neg.any():
                self.log("train/neg_dist", dist[neg].mean())
        return loss

    def configure_optimizers(self):
        o = self.cfg.optim
        groups = [{"params": self.head.parameters(), "lr": o.lr}]
        if self.encoder is not None and self.cfg.model.finetune_encoder:
            groups.append({"params": self.encoder.parameters(), "lr": o.encoder_lr})
        return torch.optim.Adam(groups, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)


# ---- data -------------------------------------------------------------------------------------
@dataclass
class SiameseData:
    images: ImageFolderDataset
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]
    root: Path


def build_data(cfg: SiameseConfig, image_size: int) -> SiameseData:
    """Scan the identity folders, split them and draw the pairs of every split."""
    root = resolve_image_root(cfg.data.path)
    images = ImageFolderDataset(root, transform=signed_transform(image_size))
    scan_decodable(images)
    if cfg.data.max_images is not None and cfg.data.max_images < len(images):
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(images))[
            :cfg.data.max_images])
        images.paths = [images.paths[i] for i in keep]
        images.labels = [images.labels[i] for i in keep]
    labels = np.asarray(images.labels, dtype=np.int64)
    d = cfg.data
    splits = split_train_val_test(labels, d.split, d.val_fraction, d.test_fraction, cfg.seed,
                                  str(root))
    pairs = {}
    for k, name in enumerate(SPLIT_NAMES):
        n = d.train_pairs if name == "train" else d.eval_pairs
        pairs[name] = sample_pairs(labels, splits[name], n, d.positive_fraction, cfg.seed + k,
                                   name)
    return SiameseData(images, labels, splits, pairs, root)


@torch.no_grad()
def embed_all(fn, dataset: Dataset, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` over every item of ``dataset`` (items ``(image, label)``) -> ``[N, D]`` on CPU."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    return torch.cat([fn(x.to(device)).float().cpu()
                      for x, _ in eval_progress(loader, f"{len(loader.dataset)} face images")])


def pair_scores(emb: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair's rows of ``emb`` ``[N,D]``."""
    e = F.normalize(emb, dim=1)
    a, b = torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
    return (e[a] * e[b]).sum(1).numpy()


# ---- iCartoonFace -----------------------------------------------------------------------------
class _EmbeddingEncoder(nn.Module):
    """Encoder module followed by the identity head (for the rank-1 protocol)."""

    def __init__(self, module: nn.Module, head: IdentityHead) -> None:
        super().__init__()
        self.module, self.head = module, head
        self.num_features = head.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.module(x))


def icartoonface_block(data_path: str, encoder: Encoder, head: IdentityHead) -> dict | None:
    """Rank-1 of the head's embedding and of the raw encoder on iCartoonFace's official test set,
    when ``data_path`` is an iCartoonFace root (else None)."""
    from backbone_ssl.data.icartoonface import find_info_file

    try:
        find_info_file(data_path)
    except UserError:
        return None
    from backbone_ssl.evaluation.icartoonface import icartoonface_rank1

    head = head.eval()
    with_head = Encoder(module=_EmbeddingEncoder(encoder.module, head).eval(),
                        arch=encoder.arch, input_size=encoder.input_size, mean=encoder.mean,
                        std=encoder.std, meta=encoder.meta)
    out = icartoonface_rank1(with_head, data_path)
    out["rank1_raw_features"] = icartoonface_rank1(encoder, data_path)["rank1"]
    return out


# ---- run --------------------------------------------------------------------------------------
def run_siamese(cfg: SiameseConfig, encoder_spec: str, run_dir: str) -> dict:
    """Train the identity head on ``cfg.data.path`` and write the report."""
    d, m = cfg.data, cfg.model
    pl.seed_everything(cfg.seed, workers=True)
    encoder = load_task_encoder(encoder_spec, task_size=d.image_size, what="images",
                                size_key="data.image_size", resize=d.resize_to_encoder,
                                seed=cfg.seed)
    data = build_data(cfg, encoder.input_size)
    run = start_run(run_dir, cfg)
    adapter = EncoderInput(encoder, finetune=m.finetune_encoder)
    device = eval_device(cfg)
    adapter.to(device)
    raw = embed_all(adapter, data.images, d.batch_size, device)  # [N, D] frozen features
    adapter.cpu()
    head = IdentityHead(encoder.num_features, m.hidden_dim, m.embed_dim)
    model = SiameseModel(cfg, head, adapter if m.finetune_encoder else None)
    bank = data.images if m.finetune_encoder else raw
    loader = DataLoader(PairDataset(bank, data.pairs["train"]), batch_size=d.batch_size,
                        shuffle=True, drop_last=len(data.pairs["train"]) > d.batch_size,
                        num_workers=d.num_workers)
    trainer = make_trainer(cfg, run)
    budget = fit(trainer, model, loader, cfg, run)

    model.eval().to(device)
    if m.finetune_encoder:
        emb = embed_all(model.embed, data.images, d.batch_size, device)
    else:
        with torch.no_grad():
            emb = torch.cat([model.head(raw[i:i + 1024].to(device)).cpu()
                             for i in range(0, len(raw), 1024)])
    model.cpu()
    scores = {k: pair_scores(emb, data.pairs[k]) for k in ("val", "test")}
    same = {k: data.pairs[k][:, 2] for k in ("val", "test")}
    ver = verification(scores["val"], same["val"], scores["test"], same["test"])
    raw_scores = {k: pair_scores(raw, data.pairs[k]) for k in ("val", "test")}
    raw_ver = verification(raw_scores["val"], same["val"], raw_scores["test"], same["test"])
    metrics = {"accuracy": ver["accuracy"], "roc_auc": ver["roc_auc"],
               "threshold": ver["threshold"], "val_accuracy": ver["val_accuracy"],
               "raw_accuracy": raw_ver["accuracy"], "raw_roc_auc": raw_ver["roc_auc"]}
    icf = icartoonface_block(d.path, encoder, head) if not m.finetune_encoder else None
    if icf is not None:
        metrics["icartoonface_rank1"] = icf["rank1"]
        metrics["icartoonface_rank1_raw"] = icf["rank1_raw_features"]
    plots = plot_training(run, {"loss": ("train/loss",),
                                "distances": ("train/pos_dist", "train/neg_dist")})
    plots += plot_verification(run / "plots", scores["test"], same["test"],
                               raw_scores["test"], ver["threshold"])
    n_ids = {k: int(len(np.unique(data.labels[v]))) for k, v in data.splits.items()}
    report = {
        "task": "siamese",
        "encoder": encoder_info(encoder_spec, encoder, frozen=not m.finetune_encoder),
        "data": {"root": str(data.root), "split": d.split, "images": len(data.labels),
                 **{f"{k}_identities": n_ids[k] for k in SPLIT_NAMES},
                 **{f"{k}_images": int(len(v)) for k, v in data.splits.items()},
                 **{f"{k}_pairs": int(len(v)) for k, v in data.pairs.items()}},
        "budget": {**budget, "batch_size": d.batch_size},
        "metrics": metrics,
        "icartoonface": icf,
        "plots": plots,
    }
    notes = [(f"Verification on test pairs ({d.split} split) at the cosine threshold chosen on "
              "validation pairs; raw_* = the encoder's own features without the head."),
             "Pairs never join an image with itself; identities "
             + ("are disjoint across train/val/test." if d.split == "identity"
                else "are shared across splits, images are disjoint.")]
    return write_report(run, report, "Siamese identity verification", notes)


def plot_verification(plots_dir: Path, scores: np.ndarray, same: np.ndarray,
                      raw_scores: np.ndarray, threshold: float) -> list[str]:
    """``roc.png`` (head vs raw features) and ``similarity.png`` (same / different histograms)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from backbone_ssl.io import atomic_path

    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    for name, s in (("head", scores), ("raw features", raw_scores)):
        fpr, tpr = roc_points(s, same)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(s, same):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("test ROC")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    bins = np.linspace(float(scores.min()), float(scores.max()) + 1e-6, 40)
    ax.hist(scores[same == 1], bins=bins, alpha=0.6, label="same identity")
    ax.hist(scores[same == 0], bins=bins, alpha=0.6, label="different")
    ax.axvline(threshold, color="k", ls="--", lw=1, label="val threshold")
    ax.set_xlabel("cosine similarity (head)")
    ax.set_title("test pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(plots_dir / "verification.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return ["verification.png"]
