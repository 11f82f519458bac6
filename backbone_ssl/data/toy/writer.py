"""Writing the toy face data set (``backbone-ssl toy faces``): the iCartoonFace layout plus
a closed-set split, every file a deterministic function of the seed."""

from __future__ import annotations

import json
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from backbone_ssl.data.toy.render import render_face, render_scene
from backbone_ssl.data.toy.traits import sample_traits
from backbone_ssl.errors import UserError

#: Fixed JPEG settings: with no EXIF and no timestamps, the same pixels give the same bytes.
JPEG_QUALITY = 92
#: Version of the drawing code, recorded in ``toy_faces.json``.
TOY_FACES_VERSION = 1

TRAIN_SUBDIR = "personai_icartoonface_rectrain/icartoonface_rectrain"
TEST_SUBDIR = "personai_icartoonface_rectest/icartoonface_rectest"
TEST_INFO = "personai_icartoonface_rectest/icartoonface_rectest_info.txt"
SPLIT_TRAIN = "split/train"
SPLIT_TEST = "split/test"
SPLIT_VAL = "split/val"
SUMMARY_NAME = "toy_faces.json"

# Random streams (first SeedSequence word after the seed).
_STREAM_TRAITS, _STREAM_IMAGE, _STREAM_SPLIT, _STREAM_TEST, _STREAM_ORDER = range(5)


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed, *words])


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, subsampling=0)
    return buf.getvalue()


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear the subtrees a previous ``write_toy_faces`` left there."""
    ours = [
        out / "personai_icartoonface_rectrain",
        out / "personai_icartoonface_rectest",
        out / "split",
    ]
    if any(p.exists() for p in ours):
        if not (out / SUMMARY_NAME).is_file():
            raise UserError(
                f"{out} already holds iCartoonFace/split folders not written by `toy faces` "
                f"(no {SUMMARY_NAME}); choose an empty --out"
            )
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


def write_toy_faces(
    out: str | Path,
    identities: int = 50,
    per_identity: int = 40,
    size: int = 64,
    seed: int = 0,
    *,
    test_identities: int | None = None,
    distractors: int | None = None,
    split_test_fraction: float = 0.25,
    split_val_fraction: float = 0.25,
) -> dict:
    """Write the embedded face data set under ``out``; return its summary.

    Layout (the real iCartoonFace recognition layout plus a split of the training identities)::

        personai_icartoonface_rectrain/icartoonface_rectrain/id_0000/id_0000_000.jpg ...
        personai_icartoonface_rectest/icartoonface_rectest/rectest_00000.jpg ...
        personai_icartoonface_rectest/icartoonface_rectest_info.txt
        split/train/id_0000/*.jpg, split/val/id_0000/*.jpg, split/test/id_0000/*.jpg
        toy_faces.json                                 (same identities, disjoint images)

    ``per_identity`` is the number of images of each training identity (all of them are in
    ``rectrain``); ``split`` partitions exactly those images: ``round(split_test_fraction *
    per_identity)`` to ``test``, ``round(split_val_fraction * per_identity)`` to ``val`` (each at
    least 1), the rest (at least 1) to ``train``. The test images do not depend on
    ``split_val_fraction``: val is taken from what used to be train.

    Test identities (default ``max(5, identities // 5)``, 2-4 images each, labels
    ``identities ...``) and distractors (default ``max(20, identities)``, one image each of yet
    other identities, label -1) never appear in training. Each test image is a larger scene with
    the face at a random place; its box is in the info file. Same seed => byte-identical files.

    Returns the ``toy_faces.json`` content (``seed``, ``size``, ``args``, ``counts``, ``paths``
    relative to ``out``) with ``paths`` made absolute, plus ``root`` and the ``counts`` repeated at
    the top level.
    """
    if test_identities is None:
        test_identities = max(5, identities // 5)
    if distractors is None:
        distractors = max(20, identities)
    for name, value, low in (
        ("identities", identities, 1),
        ("per_identity", per_identity, 3),
        ("size", size, 16),
        ("seed", seed, 0),
        ("test_identities", test_identities, 0),
        ("distractors", distractors, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"toy faces: {name} must be an integer >= {low}, got {value!r}")
    if not 0.0 < split_test_fraction < 1.0:
        raise UserError(
            f"toy faces: split_test_fraction must be in (0, 1), got {split_test_fraction}"
        )
    if not 0.0 < split_val_fraction < 1.0 or split_test_fraction + split_val_fraction >= 1.0:
        raise UserError(
            f"toy faces: split_val_fraction must be in (0, 1) and leave room for train "
            f"(val {split_val_fraction} + test {split_test_fraction} < 1)"
        )

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"toy faces: --out {out} exists and is not a directory")
    _prepare_out(out)
    n_ids = identities + test_identities + distractors
    pad = max(4, len(str(n_ids - 1)))
    kpad = max(3, len(str(per_identity - 1)))
    n_test_each = min(per_identity - 2, max(1, round(split_test_fraction * per_identity)))
    n_val_each = min(per_identity - n_test_each - 1,
                     max(1, round(split_val_fraction * per_identity)))

    train_root, split_train, split_test = out / TRAIN_SUBDIR, out / SPLIT_TRAIN, out / SPLIT_TEST
    split_val = out / SPLIT_VAL
    for i in range(identities):
        ident = f"id_{i:0{pad}d}"
        traits = sample_traits(_rng(seed, _STREAM_TRAITS, i))
        perm = _rng(seed, _STREAM_SPLIT, i).permutation(per_identity).tolist()
        test_ks = set(perm[:n_test_each])
        val_ks = set(perm[n_test_each:n_test_each + n_val_each])
        for sub in (train_root / ident, split_train / ident, split_val / ident, split_test / ident):
            sub.mkdir(parents=True, exist_ok=True)
        for k in range(per_identity):
            data = jpeg_bytes(render_face(traits, _rng(seed, _STREAM_IMAGE, i, k), size))
            fname = f"{ident}_{k:0{kpad}d}.jpg"
            (train_root / ident / fname).write_bytes(data)
            part = split_test if k in test_ks else split_val if k in val_ks else split_train
            (part / ident / fname).write_bytes(data)

    # Test set: fresh identities (label = identity number) and distractors (label -1).
    items: list[tuple[int, int, int]] = []  # (identity number, image index, label)
    for j in range(test_identities):
        ident_no = identities + j
        n = int(_rng(seed, _STREAM_TEST, ident_no).integers(2, 5))
        items += [(ident_no, k, ident_no) for k in range(n)]
    for j in range(distractors):
        items.append((identities + test_identities + j, 0, -1))
    order = _rng(seed, _STREAM_ORDER).permutation(len(items)).tolist()
    test_root = out / TEST_SUBDIR
    test_root.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    names: dict[tuple[int, int], str] = {}
    for pos, idx in enumerate(order):
        ident_no, k, label = items[idx]
        traits = sample_traits(_rng(seed, _STREAM_TRAITS, ident_no))
        img, box = render_scene(traits, _rng(seed, _STREAM_IMAGE, ident_no, k), size)
        name = f"rectest_{pos:05d}.jpg"
        (test_root / name).write_bytes(jpeg_bytes(img))
        names[(ident_no, k)] = name
        rows.append(f"{name} {box[0]} {box[1]} {box[2]} {box[3]} {label}")
    pairs: list[str] = []
    for j in range(test_identities):
        ident_no = identities + j
        ks = sorted(k for (i2, k) in names if i2 == ident_no)
        pairs += [f"{names[(ident_no, ks[0])]} {names[(ident_no, k)]}" for k in ks[1:]]
    lines = rows + pairs
    (out / TEST_INFO).write_text("".join(line + "\n" for line in lines))

    summary = {
        "dataset": "toy_faces",
        "version": TOY_FACES_VERSION,
        "generator": "backbone_ssl.data.toy.write_toy_faces",
        "seed": int(seed),
        "size": int(size),
        "args": {
            "identities": int(identities),
            "per_identity": int(per_identity),
            "size": int(size),
            "seed": int(seed),
            "test_identities": int(test_identities),
            "distractors": int(distractors),
            "split_test_fraction": float(split_test_fraction),
            "split_val_fraction": float(split_val_fraction),
        },
        "counts": {
            "identities": int(identities),
            "train_images": identities * per_identity,
            "split_train_images": identities * (per_identity - n_test_each - n_val_each),
            "split_val_images": identities * n_val_each,
            "split_test_images": identities * n_test_each,
            "test_identities": int(test_identities),
            "test_images": len(items),
            "test_probe_images": len(items) - distractors,
            "distractors": int(distractors),
            "pairs": len(pairs),
        },
        "paths": {
            "rectrain": TRAIN_SUBDIR,
            "rectest": TEST_SUBDIR,
            "rectest_info": TEST_INFO,
            "split_train": SPLIT_TRAIN,
            "split_val": SPLIT_VAL,
            "split_test": SPLIT_TEST,
        },
    }
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    result = json.loads(json.dumps(summary))
    result.update(summary["counts"])  # flat copies, for one-line printing
    result["root"] = str(out)
    result["paths"] = {k: str(out / v) for k, v in summary["paths"].items()}
    result["paths"]["summary"] = str(out / SUMMARY_NAME)
    return result
