"""Training curves from ``RUN/metrics.csv`` (Lightning's CSVLogger) to ``RUN/plots/*.png``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from backbone_ssl.io import atomic_path

#: plot file -> metric columns drawn in it (a plot is skipped when none of its columns exist)
CURVES: dict[str, tuple[str, ...]] = {
    "loss": ("train/loss",),
    "knn": ("val/knn_top1", "val/knn_top5"),
    "lr": ("train/lr",),
    "ema_momentum": ("train/ema_momentum",),
    "collapse": ("train/collapse_std",),
    "hole_psnr": ("val/hole_psnr", "val/meanfill_hole_psnr"),
    "hole_ssim": ("val/ssim", "val/meanfill_ssim"),
    "gan": ("train/d_loss", "train/adv", "train/l1"),
    "person": ("val/acc", "val/balanced_acc", "val/roc_auc"),
    "teacher": ("train/teacher_entropy", "train/teacher_student_kl"),
}

#: plot file -> (reference column, label) drawn as dashed horizontal lines at the column's last
#: value: the healthy level a reader compares the curve with, or the value a collapse gives
REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "collapse": (("train/collapse_std_healthy", "healthy 1/sqrt(d)"),),
    "loss": (("train/loss_collapse_value", "collapse value"),),
    "teacher": (("train/loss_collapse_value", "log K (uniform)"),),
}


def read_metrics(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> ``{column: [(step, value), ...]}`` (empty cells dropped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = Path(path)
    if not path.is_file():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    series.setdefault(key, []).append((step, v))
    return series


def plot_curves(metrics_csv: str | Path, plots_dir: str | Path,
                curves: dict[str, tuple[str, ...]] = CURVES) -> list[Path]:
    """Write one PNG per entry of ``curves`` that has data; returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from backbone_ssl.monitors import STD_COLLAPSE_FRACTION

    series = read_metrics(metrics_csv)
    plots_dir = Path(plots_dir)
    written: list[Path] = []
    for name, columns in curves.items():
        present = [c for c in columns if series.get(c)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for col in present:
            steps, values = zip(*series[col])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=col)
        for col, label in REFERENCES.get(name, ()):
            if series.get(col):
                level = series[col][-1][1]
                ax.axhline(level, ls="--", color="green", lw=1, label=f"{label} {level:.3g}")
                if name == "collapse":
                    ax.axhline(level * STD_COLLAPSE_FRACTION, ls=":", color="red", lw=1,
                               label="collapse threshold (1/3)")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(save_pyplot(fig, plots_dir / f"{name}.png"))
    return written


def save_pyplot(fig, out: Path) -> Path:
    """Lay out a pyplot figure, write it to ``out`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
