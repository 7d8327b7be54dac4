#!/usr/bin/env bash
# All benches in one command on the GPU machine (see shared/gpu/README.md): install the carried
# wheels, then write JSON results under $OUT. Run from the project root with `.whl` carried:
#   bash bench/gpu.sh            # train (20k, 32/64 px, both stems, compile off/on) + predict
#   STUDY=1 bash bench/gpu.sh    # also the 100k/100-class/25-epoch study
set -euo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site NO_ALBUMENTATIONS_UPDATE=1
python3 -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
python3 bench/train_bench.py --work /tmp/bench --out "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
python3 bench/predict_bench.py --work /tmp/bench-predict --out "$OUT/predict.json" 2>&1 | tail -12
if [ "${STUDY:-0}" = 1 ]; then
  python3 bench/train_bench.py --study --work /tmp/bench --out "$OUT/study.json" 2>&1 | tail -5
fi
