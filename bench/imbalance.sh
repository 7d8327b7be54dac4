#!/usr/bin/env bash
# Class imbalance on flowers5 (586..842 train images per class; docs/fine-tuning.md): one small
# recipe trained three ways with the same seed (plain; loss.class_weights: balanced;
# data.sampler: balanced); prints each class's test recall (per_class.csv) and the test acc.
#   bench/imbalance.sh [OUT] [EPOCHS]   (run from the project root; EPOCHS defaults to 6)
#   DATA=path/to/flowers5_128 bench/imbalance.sh     (default ../shared/data/flowers5_128)
set -euo pipefail
OUT=${1:-bench_out/imbalance}
EPOCHS=${2:-6}
DATA=${DATA:-../shared/data/flowers5_128}
mkdir -p "$OUT"
cat > "$OUT/flowers5_imbalance.yaml" <<YAML
name: plain
seed: 0
data:
  source: {name: folder, root: $DATA}
  image_size: 32
  resize: crop
  val_fraction: 0.1
  augment: [{name: HorizontalFlip, p: 0.5}]
model: {name: cnn, blocks: [{channels: 32, pool: max}, {channels: 64, pool: max}, {channels: 128, pool: max}]}
loss: cross_entropy
optim: {name: adam, lr: 0.001}
train: {epochs: $EPOCHS, batch_size: 64, track: []}
YAML
R="$OUT/flowers5_imbalance.yaml"
python -m clfkit train "$R" --out "$OUT/runs" --quiet --set name=plain
python -m clfkit train "$R" --out "$OUT/runs" --quiet --set name=class_weights \
    --set loss.class_weights=balanced
python -m clfkit train "$R" --out "$OUT/runs" --quiet --set name=sampler --set data.sampler=balanced
python - "$OUT/runs" <<'PY'
import csv, json, sys
from pathlib import Path
runs = Path(sys.argv[1])
names = ["plain", "class_weights", "sampler"]
recall = {n: {r["class"]: float(r["recall"] or 0) for r in csv.DictReader(open(runs / n / "per_class.csv"))}
          for n in names}
summary = {n: json.loads((runs / n / "summary.json").read_text()) for n in names}
print(f"{'class':<12}" + "".join(f"{n:>15}" for n in names))
for c in summary["plain"]["class_names"]:
    print(f"{c:<12}" + "".join(f"{recall[n][c]:>15.3f}" for n in names))
spread = {n: max(recall[n].values()) - min(recall[n].values()) for n in names}
print(f"{'recall range':<12}" + "".join(f"{spread[n]:>15.3f}" for n in names))
print(f"{'test acc':<12}" + "".join(f"{summary[n]['test_acc']:>15.4f}" for n in names))
w = summary["class_weights"]["class_weights"]
print("balanced class weights: " + ", ".join(f"{c} {x:.3f}" for c, x in zip(summary["plain"]["class_names"], w)))
PY
