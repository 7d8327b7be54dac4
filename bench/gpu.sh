#!/usr/bin/env bash
# The one device check (issue 15), <= 8 min wall on an H100/H200. Run from the project root on
# the GPU machine with `.whl` carried (see shared/gpu/README.md: ../shared/gpu/fetch-wheels.sh
# fills it once); results go to $OUT (gpu_bench.json + gpu_bench.log), to commit under
# bench/results/. CPU check of the driver: python bench/gpu_bench.py --smoke --out /tmp/x.json
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export NO_ALBUMENTATIONS_UPDATE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  python3 -m pip install -q --no-deps --no-build-isolation -e .
fi
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt" || true
# 450 s for the cases and the study, leaving the install and the copy-back inside 8 minutes
timeout 450 python3 bench/gpu_bench.py --work /tmp/bench --out "$OUT/gpu_bench.json" "$@" 2>&1 \
  | tee "$OUT/gpu_bench.log" | grep -v '^\s*$' | tail -30
# The first-decode ratio (issue 15 item 4) needs an idle many-core machine: this one's CPUs,
# after the GPU cases; only when the 8 minutes leave room, and it never costs the figures above.
[ "$SECONDS" -lt 400 ] && timeout 60 python3 bench/decode_bench.py --images 20000 --rounds 3 --work /tmp/decode \
  --out "$OUT/decode_gpu_host.json" > "$OUT/decode_gpu_host.log" 2>&1 || echo "decode bench: skipped (no time left), failed or timed out (see decode_gpu_host.log)"
