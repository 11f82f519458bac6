"""Pretraining throughput: ``pretrain dino|byol`` (Lightning path) against the reference loop.

Each run is a fresh subprocess; the paths alternate (reference, ours, ours-fast, reference, ...)
so that a change of machine load hits all of them alike. Images/s are steady state: the steps
after ``--warmup`` (worker start-up, first allocations), timed from the end of one training batch
to the end of the next (for ours: a Lightning callback at ``on_train_batch_end``; checkpointing,
export and plots after the last step are not counted).

    python benchmarks/bench_pretrain.py --data /tmp/faces/split/train --repeats 5

Settings: resnet18, 64 px, batch 64, 2 DataLoader workers, DINO 2 global + 2 local 32 px views,
BYOL 2 views; the same for every path. ``--fast`` lists the overrides of the fast path.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import emit, load_average, machine, median, run_case  # noqa: E402

HERE = Path(__file__).resolve().parent
FAST = ("data.cache=true",)


def ours(method: str, data: str, steps: int, warmup: int, batch: int, workers: int,
         arch: str, size: int, extra: list[str]) -> dict:
    """One ``pretrain`` run in this process; steady-state images/s after ``warmup`` batches."""
    import pytorch_lightning as pl

    from backbone_ssl.train import pretrain

    stamps: list[float] = []

    class StepTimer(pl.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            stamps.append(time.perf_counter())

    overrides = [f"trainer.max_steps={warmup + steps}", "trainer.enable_progress_bar=false",
                 "trainer.log_every_n_steps=1000", "trainer.checkpoint_every_n_steps=100000",
                 f"data.batch_size={batch}", f"data.num_workers={workers}",
                 f"model.arch={arch}", f"data.image_size={size}", *extra]
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(method, data=data, out=str(Path(tmp) / "run"), overrides=overrides,
                 callbacks=[StepTimer()])
    seconds = stamps[warmup + steps - 1] - stamps[warmup - 1]
    return {"path": "ours", "method": method, "overrides": extra, "steps": steps,
            "warmup": warmup, "images_per_s": round(steps * batch / seconds, 2),
            "step_s": [round(b - a, 3) for a, b in zip(stamps[warmup - 1:], stamps[warmup:])]}


def compare(a: argparse.Namespace) -> dict:
    """Alternate reference / ours / ours-fast ``a.repeats`` times per method."""
    common = ["--data", a.data, "--steps", str(a.steps), "--warmup", str(a.warmup),
              "--batch-size", str(a.batch_size), "--workers", str(a.workers),
              "--arch", a.arch, "--size", str(a.size)]
    paths = {
        "reference": lambda m: [str(HERE / "reference_loop.py"), m, *common],
        "ours": lambda m: [__file__, "--one", m, *common],
        "ours-fast": lambda m: [__file__, "--one", m, *common, "--extra", *a.fast],
    }
    results: dict = {"machine": machine(), "settings": vars(a), "runs": [], "summary": {}}
    for method in a.methods:
        for r in range(a.repeats):
            for name, args in paths.items():
                res = run_case(args(method))
                res["name"] = name
                results["runs"].append(res)
                print(f"{method} {name} #{r}: {res['images_per_s']} img/s "
                      f"(load {res['load_before']}->{res['load_after']}, "
                      f"rss {res['peak_rss_mb']}/{res['peak_rss_children_mb']} MB)",
                      file=sys.stderr, flush=True)
        for name in paths:
            runs = [x for x in results["runs"] if x["method"] == method and x["name"] == name]
            results["summary"][f"{method}/{name}"] = {
                "median_images_per_s": median([x["images_per_s"] for x in runs]),
                "all_images_per_s": [x["images_per_s"] for x in runs],
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
                "peak_rss_worker_mb": max(x["peak_rss_children_mb"] for x in runs),
                "load": [x["load_before"] for x in runs],
            }
        ref = results["summary"][f"{method}/reference"]["median_images_per_s"]
        for name in ("ours", "ours-fast"):
            s = results["summary"][f"{method}/{name}"]
            s["vs_reference"] = round(s["median_images_per_s"] / ref, 3)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="image folder, e.g. TOY/split/train")
    ap.add_argument("--methods", nargs="+", default=["dino", "byol"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fast", nargs="*", default=list(FAST), help="overrides of ours-fast")
    ap.add_argument("--json", help="write all runs here")
    ap.add_argument("--one", choices=["dino", "byol"], help=argparse.SUPPRESS)
    ap.add_argument("--extra", nargs="*", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        emit(ours(a.one, a.data, a.steps, a.warmup, a.batch_size, a.workers, a.arch, a.size,
                  a.extra))
        return
    print(f"load average at start: {load_average()}", file=sys.stderr)
    results = compare(a)
    text = json.dumps(results, indent=2)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
