"""Helpers shared by the benchmark scripts: one case per subprocess, its peak RSS, the machine.

Every benchmark runs each case in a fresh ``python`` subprocess that prints one JSON line
(:func:`emit`), which carries the case's peak RSS: ``getrusage`` ``ru_maxrss`` of the process
itself and of the processes it reaped (DataLoader workers), so cases never mix.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Sequence


def load_average() -> float:
    """1-minute load average (the machine is shared: record it next to every number)."""
    return round(os.getloadavg()[0], 2)


def run_case(args: Sequence[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python *args`` in a subprocess; its last stdout line is a JSON object (:func:`emit`).

    Returns that object plus ``wall_s`` and ``load_before`` / ``load_after``.
    """
    load_before = load_average()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"case {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(wall_s=round(wall, 2), load_before=load_before, load_after=load_average())
    return result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> dict[str, Any]:
    """CPU, core count and the versions that matter for speed."""
    import faiss
    import lightly
    import numpy
    import PIL
    import pytorch_lightning
    import sklearn
    import timm
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "lightly": lightly.__version__, "timm": timm.__version__,
        "pytorch_lightning": pytorch_lightning.__version__, "faiss": faiss.__version__,
        "sklearn": sklearn.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
    }


def peak_rss_mb() -> dict[str, float]:
    """Peak resident set (MB) of this process and of the largest child it has reaped."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_rss_mb": round(own, 1), "peak_rss_children_mb": round(children, 1)}


def emit(obj: dict[str, Any]) -> None:
    """Print ``obj`` plus the peak RSS as the one JSON line a case reports."""
    print(json.dumps({**obj, **peak_rss_mb()}), flush=True)
