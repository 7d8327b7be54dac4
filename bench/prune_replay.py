"""Replay pruning rules over a finished sweep: which rule would have found the grid's best, and
at what share of its epochs, over many trial orders.

A tune trial with the recipe's seed trains exactly as the sweep's run of the same values does
(CPU runs are deterministic; tests/test_tune_sampler.py checks it), so a pruned trial's val
accuracies up to the epoch it stopped are the sweep run's. Replaying each run's metrics.jsonl
through Optuna's own pruner (an in-memory study, one trial per run, in a seeded order) gives the
pruned grid of that order without training anything. The fixed order of one real
``clfkit tune --sampler grid`` is one of these orders.

    python bench/prune_replay.py SWEEP_FOLDER [--orders 500] [--out replay.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from clfkit.run.reader import read_history  # noqa: E402
from clfkit.studies.tune import make_pruner, pruning_start  # noqa: E402


def _clfkit(pruner: str, prune_from=None):
    """clfkit tune's own pruner (clfkit.studies.tune.make_pruner) for a run of ``e`` epochs."""
    return lambda e: make_pruner(SimpleNamespace(pruner=pruner, epochs=e, prune_from=prune_from))


RULES = {  # name -> pruner factory given the run's epochs
    "quartile from a third (clfkit's default)": _clfkit("quartile"),
    "quartile from epoch 1 (--prune-from 1)": _clfkit("quartile", 1),
    "median from a third (--pruner median)": _clfkit("median"),
    "median from epoch 1 (Optuna's MedianPruner)": _clfkit("median", 1),
    "median from half": lambda e: _clfkit("median", e // 2)(e),
    "median from a third, 4 trials finished first": lambda e: optuna.pruners.MedianPruner(
        n_startup_trials=4, n_warmup_steps=pruning_start(e)
    ),
    "halving from a third (--pruner halving)": _clfkit("halving"),
    "halving from epoch 1": _clfkit("halving", 1),
}


def replay(curves: list[list[float]], order: list[int], pruner) -> tuple[float, int]:
    """(best val acc among finished trials, epochs trained) of one pruned pass over ``order``."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    epochs, best = 0, 0.0
    for i in order:
        trial = study.ask()
        for step, acc in enumerate(curves[i], start=1):
            epochs += 1
            trial.report(acc, step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curves[i]))
            best = max(best, max(curves[i]))
    return best, epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs = sorted(p for p in args.sweep.iterdir() if (p / "metrics.jsonl").is_file())
    curves = [[row["val_acc"] for row in read_history(r)] for r in runs]
    epochs = max(len(c) for c in curves)
    grid_best, grid_epochs = max(max(c) for c in curves), sum(len(c) for c in curves)
    rng = random.Random(0)
    orders = [rng.sample(range(len(runs)), len(runs)) for _ in range(args.orders)]
    print(
        f"{args.sweep}: {len(runs)} runs, {grid_epochs} epochs, grid best val acc {grid_best:.4f}; "
        f"{args.orders} orders"
    )
    print(f"| rule | reaches the grid's best | best val acc (mean) | epochs (share of the grid's) |")
    print("|---|---|---|---|")
    results = {}
    for name, make in RULES.items():
        outcomes = [replay(curves, o, make(epochs)) for o in orders]
        hit = sum(b >= grid_best for b, _ in outcomes) / len(outcomes)
        mean_best = sum(b for b, _ in outcomes) / len(outcomes)
        share = sum(e for _, e in outcomes) / len(outcomes) / grid_epochs
        results[name] = {"reaches_grid_best": hit, "mean_best_val_acc": mean_best, "epoch_share": share}
        print(f"| {name} | {hit:.0%} of orders | {mean_best:.4f} | {share:.2f} |")
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "sweep": str(args.sweep),
                    "runs": len(runs),
                    "grid_epochs": grid_epochs,
                    "grid_best": grid_best,
                    "orders": args.orders,
                    "rules": results,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
