"""The official iCartoonFace recognition protocol: rank-1 of probe/mate pairs among distractors.

Every test image (cropped to its box) is embedded with the encoder's own preprocessing; images
are compared by cosine similarity. A probe scores when its mate is more similar to it than every
distractor (label ``-1``) is; rank-1 is the fraction of probe/mate pairs that score. Ties count
as misses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backbone_ssl.data.icartoonface import TestImages, drop_undecodable, read_test
from backbone_ssl.data.transforms import eval_transform
from backbone_ssl.evaluation.features import extract_features
from backbone_ssl.evaluation.knn import knn_search, l2_normalize
from backbone_ssl.evaluation.report import (
    encoder_report_block,
    merge_section,
    read_report,
    write_report,
)
from backbone_ssl.export import Encoder

log = logging.getLogger(__name__)


def rank1_hits(
    feats: np.ndarray, pairs: Sequence[tuple[int, int]], distractors: Sequence[int]
) -> np.ndarray:
    """``[len(pairs)]`` bool: for each ``(probe, mate)`` row pair of ``feats`` ``[N, D]``, whether
    the mate's cosine similarity to the probe beats every distractor row's (the probe itself
    excluded). With no distractors every pair scores."""
    if not pairs:
        return np.zeros(0, dtype=bool)
    x = l2_normalize(feats)
    probes = np.asarray([p for p, _ in pairs], dtype=np.int64)
    mates = np.asarray([m for _, m in pairs], dtype=np.int64)
    mate_sim = np.einsum("nd,nd->n", x[probes], x[mates])
    dis = np.asarray(distractors, dtype=np.int64)
    if dis.size == 0:
        return np.ones(len(pairs), dtype=bool)
    sims, idx = knn_search(x[dis], x[probes], k=2)  # 2: the probe may itself be a distractor
    best = np.where(dis[idx[:, 0]] == probes, sims[:, -1] if sims.shape[1] > 1 else -np.inf,
                    sims[:, 0])
    return mate_sim > best


def icartoonface_rank1(
    encoder: Encoder, root: str | os.PathLike, batch_size: int = 128
) -> dict[str, Any]:
    """Run the protocol for one encoder: ``{"rank1", "probes", "images", "distractors"}``."""
    test = read_test(root)
    drop_undecodable(test)
    dataset = TestImages(test, eval_transform(encoder.input_size, encoder.mean, encoder.std))
    log.info("iCartoonFace: embedding %d test images with %s", len(dataset), encoder.arch)
    feats = extract_features(encoder, dataset, batch_size=batch_size)
    hits = rank1_hits(feats, test.pairs, test.distractors)
    return {"rank1": float(hits.mean()), "probes": int(hits.size), "images": len(test.images),
            "distractors": len(test.distractors)}


def run_icartoonface_eval(
    encoder: Encoder,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    baseline: Encoder | None = None,
    batch_size: int = 128,
    pixels: Encoder | None = None,
) -> dict[str, Any]:
    """Evaluate ``encoder`` (and ``baseline``, ``pixels``) with the rank-1 protocol on
    iCartoonFace ``root``.

    Adds ``icartoonface`` (and ``baseline.icartoonface``, ``pixels.icartoonface``) to
    ``out_dir/report.json``, keeping what
    is there for the same encoder (a report of another encoder is replaced); returns the report.
    """
    out_dir = Path(out_dir)
    info = json.loads(json.dumps(encoder_report_block(encoder)))
    report = read_report(out_dir)
    if report.get("encoder") not in (None, info):
        log.warning("%s holds a report for another encoder; starting a new one", out_dir)
        report = {}
    if "encoder" not in report:
        write_report(out_dir, {"encoder": info, **report})
    result = icartoonface_rank1(encoder, root, batch_size)
    report = merge_section(out_dir, "icartoonface", result)
    # a baseline section keeps its other results only when it is of the same baseline
    for name, enc, key, value in (("baseline", baseline, "arch", lambda e: e.arch),
                                  ("pixels", pixels, "size", lambda e: e.input_size)):
        if enc is None:
            continue
        section = dict(report.get(name) or {})
        if section.get(key, value(enc)) != value(enc):
            section = {}
        section[key] = value(enc)
        section["icartoonface"] = icartoonface_rank1(enc, root, batch_size)
        report = merge_section(out_dir, name, section)
    return report
