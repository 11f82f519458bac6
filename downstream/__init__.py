"""downstream: models that consume exported encoders (face cloze, Siamese identity, GAN, BiGAN,
VAE-GAN, IntroVAE, StyleGAN, in-domain inversion)."""

from __future__ import annotations

from typing import Sequence

__all__ = ["RESUMABLE", "run_downstream"]

#: tasks with ``--resume`` (stylegan resumes with ``trainer.resume=true``)
RESUMABLE = ("bigan", "vaegan", "introvae")


def run_downstream(task: str, *, encoder: str, data: str, out: str,
                   overrides: Sequence[str] = (), config_file: str | None = None,
                   resume: bool = False) -> dict:
    """``backbone-ssl downstream TASK --encoder ENC --data PATH --out RUN [key=value ...]``.

    Loads ``configs/<task>.yaml`` (or ``config_file``) with the overrides, trains the task model
    on ``data`` with the encoder ``ENC`` (an exported folder, a .ckpt or ``random:<arch>``) and
    writes ``RUN/report.json``, ``RUN/report.md`` and ``RUN/plots/``; returns the report.
    ``resume`` (bigan, vaegan, introvae): continue ``RUN/checkpoints/last.ckpt`` up to
    ``trainer.max_steps``.
    """
    from backbone_ssl.config import load_config
    from backbone_ssl.errors import UserError
    from downstream.config import CONFIGS

    if task not in CONFIGS:
        raise UserError(f"unknown downstream task '{task}' (choose from {', '.join(CONFIGS)})")
    cfg = load_config(CONFIGS[task], task, config_file, overrides, data__path=data)
    if cfg.task != task:
        raise UserError(f"config is for task '{cfg.task}', not '{task}'")
    if not cfg.data.path:
        raise UserError(f"downstream {task} needs --data PATH")
    if resume and task not in RESUMABLE:
        raise UserError(f"--resume is supported by downstream {', '.join(RESUMABLE)}, not {task}")
    if task == "bigan":
        from downstream.bigan import run_bigan

        return run_bigan(cfg, encoder, out, resume=resume)
    if task == "vaegan":
        from downstream.vaegan import run_vaegan

        return run_vaegan(cfg, encoder, out, resume=resume)
    if task == "introvae":
        from downstream.introvae import run_introvae

        return run_introvae(cfg, encoder, out, resume=resume)
    if task == "cloze":
        from downstream.cloze import run_cloze as run
    elif task == "siamese":
        from downstream.siamese import run_siamese as run
    elif task == "stylegan":
        from downstream.stylegan import run_stylegan as run
    elif task == "invert":
        from downstream.invert import run_invert as run
    else:
        from downstream.facegan import run_gan as run
    return run(cfg, encoder, out)
