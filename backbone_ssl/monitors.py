"""Online monitors run during pretraining (Lightning callbacks)."""

from __future__ import annotations

import pytorch_lightning as pl

from backbone_ssl.data.transforms import DEFAULT_MEAN, DEFAULT_STD
from backbone_ssl.evaluation.features import embed_dataset, load_image_folder
from backbone_ssl.evaluation.knn import knn_classify
from backbone_ssl.evaluation.labels import align_by_name
from backbone_ssl.export import Encoder
from backbone_ssl.methods.support import should_validate


class OnlineKNN(pl.Callback):
    """kNN accuracy of the current backbone on a labelled split, every N epochs and at the end.

    Embeds ``val_train`` (gallery) and ``val_test`` (queries) in eval mode with the backbone that
    gets exported (``export.network``: DINO's teacher, BYOL's online network, ...) and
    logs ``val/knn_top1`` and ``val/knn_top5`` (faiss, cosine, temperature-weighted vote). Every
    process computes it on the same small split, so DDP ranks stay in step.
    """

    def __init__(self, val_train: str, val_test: str, image_size: int, every_n_epochs: int = 1,
                 k: int = 20, t: float = 0.07) -> None:
        self.train_set, _ = load_image_folder(val_train)
        self.test_set, _ = load_image_folder(val_test)
        labels, keep, _ = align_by_name(self.train_set.classes, self.test_set.classes,
                                        self.test_set.labels)
        self.test_set.paths = [self.test_set.paths[i] for i in keep]
        self.test_set.labels = labels.tolist()
        self.image_size = image_size
        self.every = max(1, every_n_epochs)
        self.k, self.t = k, t

    def measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """kNN metrics of the exported network's backbone now (train mode is restored after)."""
        pick = getattr(pl_module, "network_backbone", None)
        backbone = pick() if callable(pick) else pl_module.backbone
        was_training = backbone.training
        enc = Encoder(backbone, "", self.image_size, DEFAULT_MEAN, DEFAULT_STD)
        try:
            gallery = embed_dataset(enc, self.train_set, device=pl_module.device)
            queries = embed_dataset(enc, self.test_set, device=pl_module.device)
        finally:
            backbone.train(was_training)
        return knn_classify(gallery, self.train_set.labels, queries, self.test_set.labels,
                            k=self.k, t=self.t, num_classes=len(self.train_set.classes))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not should_validate(trainer, self.every):
            return
        scores = self.measure(pl_module)
        pl_module.log("val/knn_top1", scores["top1"], sync_dist=False)
        pl_module.log("val/knn_top5", scores["top5"], sync_dist=False)
