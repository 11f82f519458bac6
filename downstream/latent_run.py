"""The training-and-report run shared by the face models with an encoder (BiGAN, VAE-GAN,
IntroVAE).

Each trains an encoder E with a generator and a critic (IntroVAE: E itself) on face crops, then
reports KID/FD of samples, the reconstruction error ``|x - G(E(x))|``, sample and reconstruction
grids and curves.
"""

from __future__ import annotations

from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from downstream.encoder import encoder_info, load_task_encoder
from downstream.facegan import evaluate, face_dataset
from downstream.latent import check_resume, reconstruction_grid
from downstream.runs import (
    FD_ENC_NOTE,
    RANDOM_REF_NOTE,
    eval_device,
    fit,
    make_trainer,
    plot_training,
    reference_info,
    save_image_grid,
    start_run,
    write_report,
)

REAL_FLOOR_NOTE = ("kid_real / fd_real: the same metrics between two disjoint real sets of the "
                   "same size (the floor a perfect generator would reach).")


def sample_rows(real: torch.Tensor, fake: torch.Tensor, rows: int, cols: int = 8) -> list:
    """Grid rows: one of real faces, then ``rows - 1`` of generated ones."""
    out = [list(real[:cols])] + [list(fake[r * cols:(r + 1) * cols])
                                 for r in range(max(1, rows - 1))]
    return [r for r in out if r]


def run_latent_model(cfg: Any, encoder_spec: str, run_dir: str, resume: bool,
                     build: Callable[[Any, Any], pl.LightningModule], *, title: str,
                     curves: dict[str, tuple[str, ...]], sample_caption: str,
                     rec_note: str) -> dict:
    """Train ``build(cfg, encoder)`` on the face crops of ``cfg`` (or continue
    ``RUN/checkpoints/last.ckpt`` with ``resume``), evaluate it and write the report.

    The model must offer ``reconstruct(x [B,3,S,S]) -> [B,3,S,S]`` and what
    :func:`downstream.facegan.evaluate` samples from."""
    d, m = cfg.data, cfg.model
    ckpt = check_resume(run_dir, cfg) if resume else None
    pl.seed_everything(cfg.seed, workers=True)
    encoder = load_task_encoder(encoder_spec, task_size=d.image_size, what="face crops",
                                size_key="data.image_size", resize=d.resize_to_encoder,
                                seed=cfg.seed)
    faces = face_dataset(cfg)
    run = start_run(run_dir, cfg, resume=resume)
    model = build(cfg, encoder)
    n_critic = getattr(cfg.loss, "n_critic", None) or 1  # IntroVAE: E's step is the critic's
    per_step = d.batch_size * n_critic
    loader = DataLoader(faces, batch_size=min(per_step, len(faces)), shuffle=True,
                        drop_last=len(faces) > per_step, num_workers=d.num_workers)
    budget = fit(make_trainer(cfg, run, n_critic + 1), model, loader, cfg, run,
                 ckpt_path=ckpt, resumable=True)
    device = eval_device(cfg)
    metrics, fake, real = evaluate(model, faces, cfg, device)
    model.eval().to(device)
    with torch.no_grad():
        rec = torch.cat([model.reconstruct(real[i:i + 64].to(device)).cpu()
                         for i in range(0, len(real), 64)])
    metrics["rec_l1"] = float((rec - real).abs().mean())
    plots = plot_training(run, curves)
    save_image_grid(sample_rows(real, fake, cfg.metrics.grid_rows), [],
                    run / "plots" / "samples.png", caption=sample_caption)
    reconstruction_grid(model.reconstruct, real, run / "plots" / "reconstructions.png", device)
    model.cpu()
    plots += ["samples.png", "reconstructions.png"]
    report = {
        "task": cfg.task,
        "encoder": encoder_info(encoder_spec, encoder, frozen=not m.finetune_encoder),
        "diffaugment": getattr(m, "diffaugment", "none"),
        "resumed": resume,
        "data": {"root": str(faces.root), "images": len(faces), "image_size": d.image_size},
        "budget": {**budget, "batch_size": d.batch_size,
                   "loss": getattr(cfg.loss, "gan", cfg.task)},
        "metrics": metrics,
        "reference": reference_info(cfg.metrics),
        "plots": plots,
    }
    notes = [FD_ENC_NOTE, REAL_FLOOR_NOTE, rec_note]
    if report["reference"]["random"]:
        notes.append(RANDOM_REF_NOTE)
    return write_report(run, report, title, notes)
