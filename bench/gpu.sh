#!/usr/bin/env bash
# The one device check (issues 15 and 24). On the GPU machine, from the project root, with .whl
# carried (docs/gpu.md):  bash bench/gpu.sh        -> $OUT/gpu_bench.json, gpu_bench.log,
# pip_list.txt, nvidia_smi.txt. On a CPU (the test of this script): bash bench/gpu.sh --cpu
#
# Order: wheels checked and installed, versions recorded, a ~5 s preflight (every import, CUDA,
# one step, a tiny torch.compile) that stops everything early with one clear line; then the
# headline study; then the pipeline vs model-only cases and the prep row, each its own process
# under its own `timeout -k` (a failure or a hang costs its row only), the JSON rewritten after
# each. A case starts only if its timeout fits before GPU_BENCH_DEADLINE_S (default 420 s
# from the start of this script); GPU_BENCH_CASES="study c32-cifar-compile ..." runs a subset.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=()
[ "${1:-}" = "--cpu" ] && MODE=(--cpu)
OUT=${OUT:-bench/results/gpu}
WHEELS=${GPU_BENCH_WHEELS:-.whl}
SITE=${GPU_BENCH_SITE:-/tmp/site}  # where the wheels are installed (on PYTHONPATH)
WORK=${GPU_BENCH_WORK:-$(mktemp -d /tmp/clfkit-gpu-bench.XXXXXX)}
DEADLINE=${GPU_BENCH_DEADLINE_S:-420}
ROWS=$WORK/rows
mkdir -p "$OUT" "$ROWS"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1

say() { echo "[gpu.sh +${SECONDS}s] $*"; }
stop() { say "STOP: $*"; exit 3; }

install_wheels() {
  local missing=() dist
  for dist in $(grep -v '^\s*#' bench/gpu_wheels.txt); do
    ls "$WHEELS/${dist//-/_}"-*.whl >/dev/null 2>&1 || ls "$WHEELS/$dist"-*.whl >/dev/null 2>&1 || missing+=("$dist")
  done
  [ ${#missing[@]} -eq 0 ] || stop "no wheel in $WHEELS/ for: ${missing[*]}. In the project root run \
../shared/gpu/fetch-wheels.sh, then call the device tool's run with carry [\".whl\"] (docs/gpu.md)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || stop "pip could not install the wheels in $WHEELS/ (two versions of one package?)"
  export PYTHONPATH=$SITE:$PWD
}

run_case() {  # name timeout
  local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$limit" ]; then
    say "skip $name: ${left} s left before the ${DEADLINE} s deadline, it may take ${limit} s"
    echo "no time left: ${left} s before the ${DEADLINE} s deadline, the case may take ${limit} s" > "$ROWS/$name.skip"
    return
  fi
  say "case $name (timeout ${limit} s)"
  timeout -k 10 "$limit" python3 bench/gpu_bench.py "${MODE[@]}" --case "$name" --rows "$ROWS" --work "$WORK" \
    2>&1 | tee "$ROWS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "$rc" > "$ROWS/$name.rc"
  [ "$rc" = 0 ] || say "case $name FAILED (exit $rc$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo ", timed out")); going on"
}

collect() {
  python3 bench/gpu_bench.py "${MODE[@]}" --collect --rows "$ROWS" --out "$OUT/gpu_bench.json" \
    || say "could not write $OUT/gpu_bench.json"
}

main() {
  say "start: $(date -u '+%F %T') UTC, deadline ${DEADLINE} s, work $WORK, results $OUT"
  [[ "$DEADLINE" =~ ^[0-9]+$ ]] || stop "GPU_BENCH_DEADLINE_S=$DEADLINE is not a number of seconds"
  local cases  # first: a mistyped GPU_BENCH_CASES or GPU_BENCH_TIMEOUTS stops before anything runs
  cases=$(python3 bench/gpu_bench.py "${MODE[@]}" --list-cases) || stop "bad case selection (the line above)"
  if [ ${#MODE[@]} -eq 0 ]; then
    install_wheels
    nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || say "nvidia-smi failed (see nvidia_smi.txt)"
    head -n 12 "$OUT/nvidia_smi.txt"
  else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  python3 -m pip list --format=freeze > "$OUT/pip_list.txt" 2>&1 || say "pip list failed"
  python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' \
    || stop "python3 cannot import torch"
  timeout -k 5 90 python3 bench/gpu_bench.py "${MODE[@]}" --preflight --rows "$ROWS"
  local rc=$?
  if [ "$rc" != 0 ]; then
    collect
    stop "the preflight failed (exit $rc): nothing else ran; the line above says what to fix"
  fi
  local name limit
  while read -r name limit; do
    run_case "$name" "$limit"
    collect
  done <<< "$cases"
  say "done: $OUT/gpu_bench.json"
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); s = r.get("study", {})
print("study:", {k: s.get(k) for k in ("finished", "epochs_done", "wall_seconds", "extrapolated_wall_seconds", "meets_target", "failed", "skipped")})
for c in r["cases"]: print(c["case"], {k: c.get(k) for k in ("ratio", "images_per_s", "model_only_images_per_s", "failed", "skipped")})' \
    "$OUT/gpu_bench.json"
  ! grep -q '"failed"' "$OUT/gpu_bench.json"  # exit 1 when a case failed (its row says why)
}

main "$@" 2>&1 | tee "$OUT/gpu_bench.log"
exit "${PIPESTATUS[0]}"
