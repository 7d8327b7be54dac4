#!/usr/bin/env bash
# Fine-tuned vs from-scratch on hymenoptera (docs/fine-tuning.md): recipes/hymenoptera_finetune.yaml
# as shipped (init: a flowers5 run, backbone frozen for 3 epochs) against the same recipe with no
# init and nothing frozen, same epochs, same data, seeds 0..N-1. Prints mean and spread of test acc.
#   bench/finetune_vs_scratch.sh INIT_RUN [SEEDS] [OUT]   (run from the project root)
#   INIT_RUN: a finished `clfkit train recipes/flowers5.yaml` run folder (e.g. runs/flowers5)
set -euo pipefail
INIT=${1:?usage: bench/finetune_vs_scratch.sh INIT_RUN [SEEDS] [OUT]}
SEEDS=$(seq -s, 0 $(( ${2:-5} - 1 )))
OUT=${3:-bench_out/finetune_vs_scratch}
mkdir -p "$OUT"
R=recipes/hymenoptera_finetune.yaml
python -m clfkit sweep $R --out "$OUT/finetuned" --quiet --set "init=$INIT" --grid "seed=$SEEDS" > "$OUT/finetuned.log"
python -m clfkit sweep $R --out "$OUT/scratch" --quiet --set init=null --set train.freeze=null \
    --set train.unfreeze_epoch=null --grid "seed=$SEEDS" > "$OUT/scratch.log"
python - "$OUT" <<'PY'
import csv, statistics, sys
out = sys.argv[1]
for name in ("finetuned", "scratch"):
    accs = [float(r["test_acc"]) for r in csv.DictReader(open(f"{out}/{name}/sweep.csv"))]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"{name:9s} test acc mean {statistics.mean(accs):.4f}  sd {sd:.4f}  min {min(accs):.4f}"
          f"  max {max(accs):.4f}  ({len(accs)} seeds: {', '.join(f'{a:.3f}' for a in accs)})")
PY
