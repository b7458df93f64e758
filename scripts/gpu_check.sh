#!/usr/bin/env bash
# GPU readiness in one command, on a machine with CUDA (under 10 minutes on an H100/H200):
#   1. the GPU-marked tests (tests/test_gpu.py): bf16 decoding against fp32, the static step compiled with
#      CUDA graphs, one LoRA step with bf16 autocast, NCCL training through torchrun, the Cog server on CUDA;
#   2. the bench on small and medium (this engine and transformers', short settings);
# then one table of what they measured. Exits non-zero when a stage failed; without a CUDA device it stops
# at once with one line saying why.
#
#   scripts/gpu_check.sh                  # PYTHON=... picks another interpreter than .venv/bin/python
#
# The bench's random checkpoints (medium: ~6.5 GB) stay in $MUSICGEN_BENCH_CACHE (default
# ~/.cache/musicgen-bench), so a second run skips building them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CACHE=${MUSICGEN_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/musicgen-bench}
# each stage's limit; together they keep the whole run under 10 minutes
TESTS_S=300
SMALL_S=90
MEDIUM_S=180

if [ ! -x "$PY" ]; then
  echo "gpu_check: no Python at $PY: run scripts/setup.sh first, or set PYTHON" >&2
  exit 2
fi

# Checked before anything else, in one line: a CPU-only torch, no device, or a driver older than the CUDA
# that torch was built for (torch then warns and sees no device: the warning is the reason worth printing).
device=$("$PY" - 2>&1 <<'EOF'
import sys
import warnings

try:
    import torch
except Exception as e:
    sys.exit(f"gpu_check: torch does not import ({e})")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    available = torch.cuda.is_available()
if not available:
    why = "; ".join(str(w.message).splitlines()[0] for w in caught) or "no NVIDIA GPU or driver visible"
    sys.exit(f"gpu_check: no CUDA device for torch {torch.__version__} (built for CUDA {torch.version.cuda}): {why}")
print(f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
)
if [ $? -ne 0 ]; then
  echo "${device##*$'\n'}" >&2  # its last line: the reason
  exit 2
fi
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "gpu_check: $device${driver:+, driver $driver}"

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()

echo "== tests: pytest -m gpu (at most ${TESTS_S} s)"
MUSICGEN_GPU_FIGURES="$work/figures.json" timeout "$TESTS_S" "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider \
  2>&1 | tee "$work/tests.log"
tests_status=${PIPESTATUS[0]}
[ "$tests_status" -eq 0 ] || failed+=("tests (exit $tests_status$([ "$tests_status" -eq 124 ] && echo ', timed out'))")

for arch in small medium; do
  limit=$SMALL_S
  [ "$arch" = medium ] && limit=$MEDIUM_S
  echo "== bench: $arch on cuda (at most ${limit} s; progress in $work/bench-$arch.log while it runs)"
  # int8 is the CPU path (musicgen.quantize), so only the bf16 engine and transformers are measured;
  # 50 timed steps and 2 repeats keep medium within its limit, checkpoint build included
  timeout "$limit" "$PY" -m musicgen bench --arch "$arch" --device cuda --impl musicgen --impl transformers \
    --steps 50 --repeats 2 --seconds 2 --cache "$CACHE" --json >"$work/bench-$arch.jsonl" 2>"$work/bench-$arch.log"
  bench_status=$?
  if [ "$bench_status" -ne 0 ]; then
    failed+=("bench $arch (exit $bench_status$([ "$bench_status" -eq 124 ] && echo ', timed out'))")
    tail -n 20 "$work/bench-$arch.log"
  fi
done

echo "== results"
"$PY" - "$work" "${failed[@]+"${failed[@]}"}" <<'EOF'
"""One table: the tests' outcome and figures, then each bench record."""

import json
import re
import sys
from pathlib import Path

work, failed = Path(sys.argv[1]), sys.argv[2:]
rows = []

log = (work / "tests.log").read_text(errors="replace") if (work / "tests.log").exists() else ""
summary = [line for line in log.splitlines() if re.search(r"\b(passed|failed|error|skipped)\b", line)]
rows.append(("tests (pytest -m gpu)", summary[-1].strip("= ") if summary else "no result (see above)"))
figures_file = work / "figures.json"
figures = json.loads(figures_file.read_text()) if figures_file.exists() else {}
for name in sorted(figures):
    rows.append((f"  {name}", str(figures[name])))

for arch in ("small", "medium"):
    path = work / f"bench-{arch}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not records:
        rows.append((f"bench {arch}", "no result (see above)"))
    for r in records:
        label = f"bench {arch} {r['impl']}"
        if "error" in r:
            rows.append((label, "failed: " + r["error"].splitlines()[0]))
            continue
        speed = f"{r['steps_per_s']} steps/s" if r.get("steps_per_s") else "steps/s: noise"
        if r.get("vs_transformers") and r["impl"] != "transformers":
            speed += f" ({r['vs_transformers']:.2f}x transformers)"
        rows.append(
            (
                label,
                f"{speed}, bound {r['bound_steps_per_s']}; {r['e2e_s_per_audio_s']:.3f} s per audio s; "
                f"load {r['load_s']:.2f} s; peak GPU {r.get('peak_gpu_mb', '-')} MB",
            )
        )

for stage in failed:
    rows.append(("FAILED", stage))
width = max(len(k) for k, _ in rows)
print(f"{'check'.ljust(width)}  result")
for key, value in rows:
    print(f"{key.ljust(width)}  {value}")
EOF

if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_check: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "gpu_check: all passed"
