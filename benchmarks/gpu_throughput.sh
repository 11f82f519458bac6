#!/usr/bin/env bash
# GPU pretraining throughput: images/s of `pretrain dino` and `pretrain byol` with bf16-mixed and
# channels_last (steady state after warm-up, median of REPEATS fresh runs), on toy faces.
# The one prepared script for a machine with a GPU (not run yet: no device was lent; see
# benchmarks/RESULTS.md). Usage, from the repository root:
#   OUT=/tmp/gpu_bench bash benchmarks/gpu_throughput.sh
# Writes $OUT/gpu_throughput.json (every run) and prints a summary. Knobs: BATCH (256), STEPS (30),
# WARMUP (10), WORKERS (8), REPEATS (5), ARCH (resnet18), SIZE (64), PY (.venv/bin/python),
# ACCEL (gpu; ACCEL=cpu with tiny knobs only smoke-tests the script).
set -euo pipefail
OUT=${OUT:-/tmp/gpu_bench}
PY=${PY:-.venv/bin/python}
BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-10}
WORKERS=${WORKERS:-8}
REPEATS=${REPEATS:-5}
ARCH=${ARCH:-resnet18}
SIZE=${SIZE:-64}
ACCEL=${ACCEL:-gpu}
mkdir -p "$OUT"
export BACKBONE_SSL_CACHE="$OUT/cache"
[ -d "$OUT/faces/split/train" ] || "$PY" -m backbone_ssl.cli toy faces --out "$OUT/faces" >/dev/null
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no GPU"; } \
  | tee "$OUT/gpu.txt"
: > "$OUT/runs.jsonl"
for rep in $(seq 1 "$REPEATS"); do
  for method in dino byol; do
    for variant in "fp32" "bf16-cl"; do
      if [ "$variant" = "fp32" ]; then
        extra=(trainer.precision=32-true trainer.channels_last=false)
      else
        extra=(trainer.precision=bf16-mixed trainer.channels_last=true)
      fi
      "$PY" benchmarks/bench_pretrain.py --one "$method" --data "$OUT/faces/split/train" \
        --steps "$STEPS" --warmup "$WARMUP" --batch-size "$BATCH" --workers "$WORKERS" \
        --arch "$ARCH" --size "$SIZE" \
        --extra "trainer.accelerator=$ACCEL" trainer.devices=1 data.cache=true "${extra[@]}" \
        | tail -n 1 | "$PY" -c "import json,sys; r=json.loads(sys.stdin.read()); \
r.update(variant='$variant', rep=$rep); print(json.dumps(r))" >> "$OUT/runs.jsonl"
      tail -n 1 "$OUT/runs.jsonl"
    done
  done
done
"$PY" - "$OUT" <<'EOF'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
summary = {}
for r in runs:
    summary.setdefault(f"{r['method']}/{r['variant']}", []).append(r["images_per_s"])
summary = {k: {"median_images_per_s": statistics.median(v), "all": v} for k, v in summary.items()}
gpu = (out / "gpu.txt").read_text().strip()
(out / "gpu_throughput.json").write_text(json.dumps({"gpu": gpu, "summary": summary,
                                                     "runs": runs}, indent=2) + "\n")
print(json.dumps(summary, indent=2))
EOF
