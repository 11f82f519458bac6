"""Person / no-person pretraining: a timm encoder trained as a binary panel classifier.

Supervised pretraining for comics: ``--data`` is a ``golden prepare`` output, whose
``person_labels.csv`` says for each panel whether a person is on it (a kept face) or not (a panel
of ``no_person_frames.txt``). The encoder (``model.arch``, ``tf_efficientnet_b0`` by default: the
TF-padded EfficientNet, whose export maps one to one onto efficientnet_pytorch for SSuperGAN; any
timm model works) feeds a linear head giving one logit; the loss is binary cross-entropy.

- Whole books are held out (``person.test_fraction`` of them, seeded): the held-out metrics,
  ``val/acc``, ``val/roc_auc`` (scikit-learn), ``val/loss`` and ``val/balanced_acc``, are logged
  every ``person.val_every_n_epochs`` epochs and at the end, with ``RUN/plots/confusion.png``.
- Class-balanced sampling (``person.balanced``): each training item draws its class uniformly, then
  a panel of that class uniformly (with replacement), the distribution of a
  ``WeightedRandomSampler`` with ``1 / count[label]`` weights. It is done in the dataset
  (:class:`ClassBalanced`), not by a sampler, so it composes with any sampler: under DDP each rank
  draws balanced items for its shard of indices (Lightning's distributed sampler, or the
  resumable one, only decides which indices a rank sees), and a resumed run redraws the same items.
- A training or held-out split with one class only is a :class:`UserError` (accuracy alone would be
  meaningless and ROC-AUC undefined).
- The export is the backbone alone (timm, ``num_classes=0``): the classifier head is not in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch.utils.data import DataLoader, Dataset

from backbone_ssl.config import DataConfig, ModelConfig, RunConfig, refuse_view_keys
from backbone_ssl.curves import save_pyplot
from backbone_ssl.errors import UserError
from backbone_ssl.methods.supervised import SupervisedMethod, augmented_view
from backbone_ssl.methods.support import plots_dir, should_validate

log = logging.getLogger(__name__)

CLASS_NAMES = ("no person", "person")


@dataclass
class PersonSection:
    """Person-classifier settings."""

    test_fraction: float = 0.2  # fraction of the books held out for validation (seeded by `seed`)
    balanced: bool = True  # class-balanced sampling of training panels
    min_scale: float = 0.6  # RandomResizedCrop lower bound (panels: keep most of the scene)
    hflip_prob: float = 0.5
    cj_strength: float = 0.3  # colour jitter (brightness, contrast, saturation), 0 = off
    threshold: float = 0.5  # probability above which a panel is called "person"
    val_every_n_epochs: int = 1  # held-out metrics + confusion matrix every N epochs and at the end


@dataclass
class PersonConfig(RunConfig):
    method: str = "person"
    data: DataConfig = field(default_factory=lambda: DataConfig(image_size=128))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="tf_efficientnet_b0"))
    person: PersonSection = field(default_factory=PersonSection)

    def validate(self) -> None:
        super().validate()
        refuse_view_keys(self)
        p = self.person
        if not 0.0 < p.test_fraction < 1.0:
            raise UserError(f"config key 'person.test_fraction' must be in (0, 1), "
                            f"got {p.test_fraction}")
        if not 0.0 < p.min_scale <= 1.0:
            raise UserError(f"config key 'person.min_scale' must be in (0, 1], got {p.min_scale}")
        if not 0.0 < p.threshold < 1.0:
            raise UserError(f"config key 'person.threshold' must be in (0, 1), got {p.threshold}")


class ClassBalanced(Dataset):
    """Class-balanced draws from a labelled dataset (see the module docstring).

    ``labels[i]`` is the class of ``dataset[i]``; item ``i`` ignores ``i`` and draws a class
    uniformly, then a member of it uniformly, from torch's global generator (which the training
    loader seeds per sample). Length: that of ``dataset`` (one epoch = as many draws).
    """

    def __init__(self, dataset: Dataset, labels: list[int]) -> None:
        self.dataset = dataset
        classes = sorted(set(labels))
        self.members = [torch.tensor([i for i, y in enumerate(labels) if y == c]) for c in classes]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        members = self.members[int(torch.randint(len(self.members), (1,)))]
        return self.dataset[int(members[torch.randint(len(members), (1,))])]


def require_both_classes(counts: list[int], where: str) -> None:
    """UserError unless ``counts`` (``[no-person, person]``) has both classes."""
    if min(counts) == 0:
        only = CLASS_NAMES[int(counts[1] > 0)]
        raise UserError(
            f"person: {where} hold only '{only}' panels ({max(counts)}); a person / no-person "
            "classifier needs both (list panels with nobody in no_person_frames.txt, add books, "
            "or change person.test_fraction / seed)"
        )


def plot_confusion(matrix: np.ndarray, out_png: Any, title: str) -> None:
    """A 2x2 confusion matrix (rows true, columns predicted) as a PNG (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    ConfusionMatrixDisplay(matrix, display_labels=list(CLASS_NAMES)).plot(
        ax=ax, colorbar=False, values_format="d")
    ax.set_title(title, fontsize=9)
    save_pyplot(fig, Path(out_png))


class Person(SupervisedMethod):
    """Binary person / no-person classifier on comic panels (supervised pretraining)."""

    name = "person"
    config_cls = PersonConfig

    def __init__(self, cfg: PersonConfig) -> None:
        super().__init__(cfg)
        self.classifier = nn.Linear(self.feature_dim, 1)
        self.val_set: Dataset | None = None

    def train_transform(self) -> Callable:
        """PIL panel -> augmented normalised ``[3,S,S]`` (random resized crop, flip, jitter)."""
        p, s = self.cfg.person, self.cfg.person.cj_strength
        return augmented_view(self.cfg.data.image_size, p.min_scale, p.hflip_prob,
                              {"brightness": s, "contrast": s, "saturation": s})

    def train_dataset(self) -> Dataset:
        """Training panels (class-balanced draws); also builds the held-out books' panels."""
        from backbone_ssl.data.golden_datasets import PersonPanels

        c, p = self.cfg, self.cfg.person
        common = dict(image_size=c.data.image_size, test_fraction=p.test_fraction, seed=c.seed)
        train = PersonPanels(c.data.path, "train", transform=self.train_transform(), **common)
        require_both_classes(train.class_counts(), f"the training books of {c.data.path}")
        self.val_set = PersonPanels(c.data.path, "test", **common)
        require_both_classes(self.val_set.class_counts(), f"the held-out books of {c.data.path}")
        log.info("person: %d training panels %s, %d held-out panels %s (books %s)", len(train),
                 train.class_counts(), len(self.val_set), self.val_set.class_counts(),
                 ", ".join(sorted(set(self.val_set.books()))))
        return ClassBalanced(train, train.labels) if p.balanced else train

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` -> person logits ``[B]``."""
        return self.classifier(self.backbone(x)).squeeze(1)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.backbone, self.classifier]

    def supervised_step(self, x: torch.Tensor, y: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of the person logit; also logs ``train/person_fraction``."""
        logits = self.forward_logits(x)
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        acc = ((logits > 0).long() == y).float().mean()
        self.log("train/person_fraction", y.float().mean(), batch_size=x.shape[0])
        return loss, acc

    @torch.no_grad()
    def predict_held_out(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels [N], person probabilities [N])`` on the held-out books (eval mode)."""
        if self.val_set is None:
            self.train_dataset()
        loader = DataLoader(self.val_set, batch_size=self.cfg.data.batch_size, shuffle=False,
                            num_workers=0)
        modules = [self.backbone, self.classifier]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        labels, probs = [], []
        try:
            for x, y in loader:
                probs.append(torch.sigmoid(self.forward_logits(x.to(self.device))).float().cpu())
                labels.append(y)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        return torch.cat(labels).numpy(), torch.cat(probs).numpy()

    def held_out_metrics(self, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        """Accuracy, balanced accuracy, ROC-AUC and mean BCE of held-out predictions."""
        pred = (probs >= self.cfg.person.threshold).astype(np.int64)
        p = np.clip(probs, 1e-7, 1 - 1e-7)
        bce = float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
        return {"val/acc": float((pred == labels).mean()),
                "val/balanced_acc": float(balanced_accuracy_score(labels, pred)),
                "val/roc_auc": float(roc_auc_score(labels, probs)),
                "val/loss": bce}

    def on_train_epoch_end(self) -> None:
        if not should_validate(self.trainer, self.cfg.person.val_every_n_epochs):
            return
        labels, probs = self.predict_held_out()
        metrics = self.held_out_metrics(labels, probs)
        for key, value in metrics.items():
            self.log(key, value, sync_dist=True)  # every rank computed the same value
        if self.trainer.is_global_zero:
            pred = (probs >= self.cfg.person.threshold).astype(np.int64)
            matrix = confusion_matrix(labels, pred, labels=[0, 1])
            title = (f"held-out books, step {self.global_step}: acc {metrics['val/acc']:.3f}, "
                     f"ROC-AUC {metrics['val/roc_auc']:.3f}")
            plot_confusion(matrix, plots_dir(self.trainer) / "confusion.png", title)
