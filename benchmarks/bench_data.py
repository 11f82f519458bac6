"""Data pipeline alone: augmented views per second, plain files vs the decode cache.

One process, one thread (as in a DataLoader worker), no model. Each measurement reads ``--images``
items of ``model.train_dataset()`` wrapped in ``SeededDataset`` (exactly what a training worker
does: decode or cache read, lightly transform, per-sample seeding); plain and cached alternate,
median of ``--repeats``. Also times building the cache once.

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


def views_per_second(dataset, n: int, offset: int) -> tuple[float, int]:
    """(views/s, views per item) reading items ``offset .. offset+n`` (seeded as in training)."""
    from backbone_ssl.data.sampling import SeededIndex, sample_seed

    start = time.perf_counter()
    n_views = 0
    for j in range(n):
        i = (offset + j) % len(dataset)
        views, _, _ = dataset[SeededIndex(i, sample_seed(0, 0, i))]
        n_views = len(views)
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
            sets = {}
            for cache in (False, True):
                cfg = load_config(cls.config_cls, method, data__path=a.data,
                                  overrides=[f"data.cache={str(cache).lower()}",
                                             f"data.image_size={a.size}", "data.num_workers=0"])
                start = time.perf_counter()
                sets[cache] = SeededDataset(cls(cfg).train_dataset())
                if cache:
                    out[f"{method}/cache_build_s"] = round(time.perf_counter() - start, 3)
                    out[f"{method}/cache_images"] = len(sets[cache])
            rates: dict[bool, list[float]] = {False: [], True: []}
            loads = []
            for r in range(a.repeats + 1):  # the first round warms caches (page cache, imports)
                loads.append(load_average())
                for cache in (False, True):
                    rate, n_views = views_per_second(sets[cache], a.images, r * a.images)
                    if r:
                        rates[cache].append(rate)
            plain, fast = median(rates[False]), median(rates[True])
            out[method] = {"views_per_item": n_views, "plain_views_per_s": round(plain, 1),
                           "cached_views_per_s": round(fast, 1), "speedup": round(fast / plain, 3),
                           "all_plain": [round(x, 1) for x in rates[False]],
                           "all_cached": [round(x, 1) for x in rates[True]], "load": loads}
            print(f"{method}: plain {plain:.0f} views/s, cached {fast:.0f} views/s "
                  f"(load {loads})", file=sys.stderr)
    out["load_end"] = load_average()
    print(json.dumps(out, indent=2), file=sys.stderr)
    emit({k: v for k, v in out.items() if k != "machine"})


if __name__ == "__main__":
    main()
