#!/usr/bin/env bash
# Pruning vs a full grid on flowers5 (docs/studies.md, "Tuning"): one recipe, three searches, each one's
# best val acc and the epochs it trained in all.
#   grid:        clfkit sweep, 4 lr x 3 dropout = 12 runs to the last epoch
#   pruned grid: clfkit tune --sampler grid, the same 12 points, the default pruner (pruning alone)
#   tpe:         clfkit tune, TPE over the continuous ranges that hold the grid, 12 trials, pruned
# then bench/prune_replay.py replays every pruner over 500 orders of the grid's own curves.
# Trials run with the recipe's seed like sweep runs do, so a grid point that survives pruning
# reproduces its sweep run's accuracy exactly (CPU runs are deterministic).
#   bench/tune_vs_grid.sh [OUT]      (run from the project root; ~45 min on 2 free CPU cores)
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
LRS=3e-4,1e-3,3e-3,1e-2
DROPS=0,0.15,0.3
python -m clfkit sweep "$OUT/flowers5_small.yaml" --out "$OUT/grid" --quiet \
    --grid optim.lr=$LRS --grid model.dropout=$DROPS > "$OUT/grid.log"
python -m clfkit tune "$OUT/flowers5_small.yaml" --out "$OUT/pruned_grid" --quiet --sampler grid \
    --space "optim.lr=choice($LRS)" --space "model.dropout=choice($DROPS)" > "$OUT/pruned_grid.log"
python -m clfkit tune "$OUT/flowers5_small.yaml" --out "$OUT/tpe" --quiet --trials 12 \
    --space 'optim.lr=loguniform(3e-4,1e-2)' --space 'model.dropout=uniform(0,0.3)' > "$OUT/tpe.log"
python - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
grid = list(csv.DictReader(open(f"{out}/grid/sweep.csv")))
ge = sum(int(r["epochs_run"]) for r in grid)
gb = max(float(r["best_val_acc"]) for r in grid)
print(f"grid: {len(grid)} runs, {ge} epochs, best val acc {gb:.4f}")
for name in ("pruned_grid", "tpe"):
    rows = list(csv.DictReader(open(f"{out}/{name}/trials.csv")))
    te = sum(int(r["epochs_run"] or 0) for r in rows)
    tb = max(float(r["best_val_acc"]) for r in rows if r["state"] == "complete")
    pruned = sum(r["state"] == "pruned" for r in rows)
    print(f"{name}: {len(rows)} trials ({pruned} pruned), {te} epochs ({te / ge:.2f} of the grid's), "
          f"best val acc {tb:.4f} ({tb - gb:+.4f} vs the grid)")
PY
python bench/prune_replay.py "$OUT/grid" --orders 500 --out "$OUT/replay.json"
