"""Wall time and peak RSS of ``backbone-ssl demo`` (what ``make demo`` runs), target < 5 min.

    python benchmarks/bench_demo.py --out /tmp/demo_bench

Runs the demo once in a subprocess on an empty output folder and prints one JSON line: wall
seconds, peak RSS of the largest process of the run (``RUSAGE_CHILDREN``: this script has no
other child) and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import load_average  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/demo_bench")
    a = ap.parse_args()
    shutil.rmtree(a.out, ignore_errors=True)
    load_before = load_average()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "backbone_ssl.cli", "demo", "--out", a.out],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"exit": proc.returncode, "wall_s": round(wall, 1),
                      "peak_rss_mb": round(rss, 1), "load_before": load_before,
                      "load_after": load_average(), "stdout_tail": proc.stdout[-400:]}))
    if proc.returncode:
        print(proc.stderr[-2000:], file=sys.stderr)
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
