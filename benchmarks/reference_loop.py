"""The reference pretraining loop: lightly's own documented examples, nothing of ours.

Follows ``examples/pytorch/dino.py`` and ``examples/pytorch/byol.py`` of lightly 1.6
(torchvision ``ImageFolder`` + lightly transform + ``DataLoader`` + lightly heads + loss +
``update_momentum`` + ``cosine_schedule``), with the settings of our configs so that both do the
same work: the same timm backbone, image size, batch, views (read from ``configs/<method>.yaml``),
head widths and optimiser (AdamW).

    python benchmarks/reference_loop.py dino --data DIR --steps 8 --warmup 2

prints one JSON line: steady-state images/s over the steps after ``warmup``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torchvision
from benchutil import emit
from lightly.loss import DINOLoss, NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead, DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms.byol_transform import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
)
from lightly.transforms.dino_transform import DINOTransform
from lightly.utils.scheduler import cosine_schedule
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class DINO(nn.Module):
    """lightly's example model: student backbone + head, teacher = copies (heads rebuilt)."""

    def __init__(self, backbone: nn.Module, dim: int, hidden: int, bottleneck: int,
                 out: int) -> None:
        super().__init__()
        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(dim, hidden, bottleneck, out, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(dim, hidden, bottleneck, out)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x).flatten(start_dim=1))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x).flatten(start_dim=1))


class BYOL(nn.Module):
    """lightly's example model: online backbone + projection + prediction, momentum copies."""

    def __init__(self, backbone: nn.Module, dim: int, proj_hidden: int, out: int,
                 pred_hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(dim, proj_hidden, out)
        self.prediction_head = BYOLPredictionHead(out, pred_hidden, out)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        z = self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1))
        return z.detach()


def build(method: str, arch: str, size: int):
    """(model, transform, criterion) with the settings of ``configs/<method>.yaml`` (read as
    plain YAML: the views, head widths and loss settings a default ``pretrain`` run uses)."""
    cfg = OmegaConf.load(CONFIGS / f"{method}.yaml")
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    norm = {"mean": MEAN, "std": STD}
    if method == "dino":
        d = cfg.dino
        transform = DINOTransform(
            global_crop_size=size, global_crop_scale=tuple(d.global_crop_scale),
            local_crop_size=d.local_crop_size, local_crop_scale=tuple(d.local_crop_scale),
            n_local_views=d.n_local_views, hf_prob=d.hf_prob, rr_prob=d.rr_prob,
            rr_degrees=d.rr_degrees, cj_strength=d.cj_strength, cj_hue=d.cj_hue,
            gaussian_blur=tuple(d.gaussian_blur), sigmas=tuple(d.sigmas),
            solarization_prob=d.solarization_prob, normalize=norm)
        model = DINO(backbone, backbone.num_features, d.hidden_dim, d.bottleneck_dim,
                     d.output_dim)
        return model, transform, DINOLoss(output_dim=d.output_dim)
    b = cfg.byol
    common = dict(input_size=size, min_scale=b.min_scale, hf_prob=b.hf_prob,
                  cj_strength=b.cj_strength, normalize=norm)
    transform = BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))
    model = BYOL(backbone, backbone.num_features, b.proj_hidden_dim, b.proj_out_dim,
                 b.pred_hidden_dim)
    return model, transform, NegativeCosineSimilarity()


def train(method: str, data: str, steps: int, warmup: int, batch_size: int, workers: int,
          arch: str, size: int) -> dict:
    """Run ``warmup + steps`` steps; return steady-state images/s of the last ``steps``."""
    torch.manual_seed(0)
    model, transform, criterion = build(method, arch, size)
    dataset = torchvision.datasets.ImageFolder(data, transform=transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.04)
    total = warmup + steps
    stamps: list[float] = []
    step = 0
    while step < total:
        for views, _ in loader:
            m = cosine_schedule(step, total, 0.996 if method == "dino" else 0.99, 1.0)
            if method == "dino":
                update_momentum(model.student_backbone, model.teacher_backbone, m=m)
                update_momentum(model.student_head, model.teacher_head, m=m)
                teacher_out = [model.forward_teacher(v) for v in views[:2]]
                student_out = [model.forward(v) for v in views]
                loss = criterion(teacher_out, student_out, epoch=0)
                loss.backward()
                model.student_head.cancel_last_layer_gradients(current_epoch=0)
            else:
                x0, x1 = views
                update_momentum(model.backbone, model.backbone_momentum, m=m)
                update_momentum(model.projection_head, model.projection_head_momentum, m=m)
                p0, z0 = model(x0), model.forward_momentum(x0)
                p1, z1 = model(x1), model.forward_momentum(x1)
                loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            stamps.append(time.perf_counter())
            step += 1
            if step >= total:
                break
    del loader  # stop the workers, so their peak RSS is counted
    seconds = stamps[-1] - stamps[warmup - 1]
    return {"path": "reference", "method": method, "steps": steps, "warmup": warmup,
            "images_per_s": round(steps * batch_size / seconds, 2),
            "step_s": [round(b - a, 3) for a, b in zip(stamps[warmup - 1:], stamps[warmup:])],
            "loss": float(loss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=["dino", "byol"])
    ap.add_argument("--data", required=True, help="identity-folder tree (ImageFolder layout)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()
    if a.warmup < 1:
        ap.error("--warmup must be >= 1 (the first step includes worker start-up)")
    emit(train(a.method, a.data, a.steps, a.warmup, a.batch_size, a.workers, a.arch, a.size))


if __name__ == "__main__":
    main()
