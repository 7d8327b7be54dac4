#!/usr/bin/env bash
# Pruned Optuna search vs a full grid on flowers5 (README "Tuning"): the same recipe, the same
# lr x dropout ranges; prints each one's best val acc and the epochs it trained in all.
#   bench/tune_vs_grid.sh [OUT]      (run from the project root; ~15 min on 2 free CPU cores)
set -euo pipefail
OUT=${1:-bench_out/tune_vs_grid}
mkdir -p "$OUT"
cat > "$OUT/flowers5_small.yaml" <<'YAML'
name: flowers5_small
data:
  source: {name: folder, root: ../shared/data/flowers5_128}
  image_size: 32
  resize: crop
  val_fraction: 0.1
  augment: [{name: HorizontalFlip, p: 0.5}]
model: {name: cnn, blocks: [{channels: 32, pool: max}, {channels: 64, pool: max}, {channels: 128, pool: max}]}
optim: {name: adam}
train: {epochs: 6, batch_size: 64}
YAML
python -m clfkit sweep "$OUT/flowers5_small.yaml" --out "$OUT/grid" --quiet \
    --grid optim.lr=3e-4,1e-3,3e-3 --grid model.dropout=0,0.3 > "$OUT/grid.log"
python -m clfkit tune "$OUT/flowers5_small.yaml" --out "$OUT/tune" --quiet --trials 6 \
    --space 'optim.lr=loguniform(3e-4,1e-2)' --space 'model.dropout=uniform(0,0.3)' > "$OUT/tune.log"
python - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
grid = list(csv.DictReader(open(f"{out}/grid/sweep.csv")))
tune = list(csv.DictReader(open(f"{out}/tune/trials.csv")))
ge = sum(int(r["epochs_run"]) for r in grid); gb = max(float(r["best_val_acc"]) for r in grid)
te = sum(int(r["epochs_run"] or 0) for r in tune)
tb = max(float(r["best_val_acc"]) for r in tune if r["state"] == "complete")
print(f"grid: {len(grid)} runs, {ge} epochs, best val acc {gb:.4f}")
print(f"tune: {len(tune)} trials ({sum(r['state'] == 'pruned' for r in tune)} pruned), {te} epochs, best val acc {tb:.4f}")
print(f"epochs ratio tune/grid: {te / ge:.2f}; best val acc tune - grid: {tb - gb:+.4f}")
PY
