"""Data pipeline alone: augmented views per second: plain files, decode cache, batched views.

One process, one thread (as in a DataLoader worker), no model forward. Each measurement reads
``--images`` items of ``model.train_dataset()`` wrapped in ``SeededDataset`` (exactly what a
training worker does: decode or cache read, lightly transform, per-sample seeding); for the
batched path (``data.batch_augment``) that is the parameter draw plus rendering every 64 items
with the module's ``on_after_batch_transfer``. The paths alternate, median of ``--repeats``.
Also times building the cache once.

    python benchmarks/bench_data.py --data /tmp/faces/split/train --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, load_average, machine, median  # noqa: E402

#: The three data paths and the overrides that select them.
PATHS = {"plain": ["data.cache=false"], "cached": ["data.cache=true"],
         "batched": ["data.batch_augment=true"]}


def views_per_second(dataset, n: int, offset: int, model=None) -> tuple[float, int]:
    """(views/s, views per item) reading items ``offset .. offset+n`` (seeded as in training).

    With ``model`` (``data.batch_augment``), items hold parameters: they are collated in batches
    of 64 and rendered by ``model.on_after_batch_transfer``, as in training; that time counts.
    """
    from torch.utils.data import default_collate

    from backbone_ssl.data.sampling import SeededIndex, sample_seed

    start = time.perf_counter()
    n_views, pending = 0, []
    for j in range(n):
        i = (offset + j) % len(dataset)
        item = dataset[SeededIndex(i, sample_seed(0, 0, i))]
        if model is None:
            n_views = len(item[0])
            continue
        pending.append(item)
        if len(pending) == 64 or j == n - 1:
            views = model.on_after_batch_transfer(default_collate(pending), 0)[0]
            n_views, pending = len(views), []
    return n * n_views / (time.perf_counter() - start), n_views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--methods", nargs="+", default=["dino", "byol"])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    a = ap.parse_args()

    import torch

    from backbone_ssl.config import load_config
    from backbone_ssl.data.cache import CACHE_ENV
    from backbone_ssl.data.sampling import SeededDataset
    from backbone_ssl.methods import get_method

    torch.set_num_threads(1)  # what a DataLoader worker gets
    out: dict = {"machine": machine(), "settings": vars(a), "load_start": load_average()}
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ[CACHE_ENV] = cache_dir
        for method in a.methods:
            cls = get_method(method)
            sets, models = {}, {}
            for path, keys in PATHS.items():
                cfg = load_config(cls.config_cls, method, data__path=a.data,
                                  overrides=[*keys, f"data.image_size={a.size}",
                                             "data.num_workers=0"])
                model = cls(cfg)
                start = time.perf_counter()
                sets[path] = SeededDataset(model.train_dataset())
                models[path] = model if path == "batched" else None
                if path == "cached":
                    out[f"{method}/cache_build_s"] = round(time.perf_counter() - start, 3)
                    out[f"{method}/cache_images"] = len(sets[path])
            rates: dict[str, list[float]] = {path: [] for path in PATHS}
            loads = []
            for r in range(a.repeats + 1):  # the first round warms caches (page cache, imports)
                loads.append(load_average())
                for path in PATHS:
                    rate, n_views = views_per_second(sets[path], a.images, r * a.images,
                                                     models[path])
                    if r:
                        rates[path].append(rate)
            med = {path: median(v) for path, v in rates.items()}
            out[method] = {"views_per_item": n_views, "load": loads,
                           **{f"{p}_views_per_s": round(v, 1) for p, v in med.items()},
                           **{f"{p}_speedup": round(v / med["plain"], 3) for p, v in med.items()},
                           **{f"all_{p}": [round(x, 1) for x in v] for p, v in rates.items()}}
            print(f"{method}: " + ", ".join(f"{p} {v:.0f} views/s" for p, v in med.items())
                  + f" (load {loads})", file=sys.stderr)
    out["load_end"] = load_average()
    print(json.dumps(out, indent=2), file=sys.stderr)
    emit({k: v for k, v in out.items() if k != "machine"})


if __name__ == "__main__":
    main()
