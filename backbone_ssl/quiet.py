"""Quiet-by-default stderr: drop the known library noise so our own lines come first.

Filtered unless ``--verbose`` (each pattern measured on torch 2.14.1, lightly 1.6, timm 1.0.31,
Lightning 2.6, faiss): faiss's loader lines (``ModuleNotFoundError(... swigfaiss_avx512)``, which
look like failures), torch's ``weight_norm`` FutureWarning (lightly's DINO head), Lightning's
litlogger tip, its ``LeafSpec`` deprecation, "Found N module(s) in eval mode", the GPU/TPU
availability lines, "Seed set to N", the estimate-stepping-batches note, and torchmetrics' KID
buffer note (our KID sets are a few hundred features).
"""

from __future__ import annotations

import logging
import re
import warnings

#: Loggers whose INFO lines are library chatter (kept at WARNING and above).
NOISY_LOGGERS = ("faiss.loader", "faiss", "lightning_fabric.utilities.seed")
#: Messages (regular expressions, searched) dropped from logs and warnings.
NOISE_PATTERNS = (
    r"AVX512|AVX2|swigfaiss|Loading faiss|Successfully loaded faiss",
    r"litlogger|LitLogger",
    r"LeafSpec",
    r"module\(s\) in eval mode",
    r"weight_norm",
    r"GPU available:|TPU available:|HPU available:|IPU available:",
    r"Seed set to",
    r"to estimate number of stepping batches",
    r"smaller than the logging interval",
    r"does not have many workers",
    r"will save all extracted features in buffer",
)
_NOISE = re.compile("|".join(NOISE_PATTERNS))


class NoiseFilter(logging.Filter):
    """Drops log records whose message matches :data:`NOISE_PATTERNS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not _NOISE.search(msg)


def is_noise(text: str) -> bool:
    """Whether a line of library output is known noise."""
    return bool(_NOISE.search(text))


def install_quiet_filters() -> None:
    """Filter the known noise from logging (root handlers) and from ``warnings``."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    noise = NoiseFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(noise)
    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).addFilter(noise)
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(noise)
    for pattern in NOISE_PATTERNS:
        warnings.filterwarnings("ignore", message=f".*(?:{pattern})")
