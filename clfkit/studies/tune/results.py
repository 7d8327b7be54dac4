"""What a tune writes from its study: trials.csv / trials.md, best.yaml, Optuna's plots and
report.html."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from clfkit.util.atomic import write_text
from clfkit.util.safe_names import MAX_LENGTH
from clfkit.recipe import validate_recipe
from clfkit.studies.tune.space import Dimension, optuna_module
from clfkit.studies.tune.study import WITHDRAWN, TuneSetup, first_prune_epoch, open_study, trial_recipe


@dataclass
class TuneResult:
    out: Path
    rows: list[dict[str, Any]]
    best: Optional[dict[str, Any]]
    files: list[Path]

    @property
    def pruned(self) -> int:
        return sum(r["state"] == "pruned" for r in self.rows)


def trial_rows(study: Any, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial, in trial order: number, params, best val acc, epochs run, state."""
    rows = []
    waiting, fail = optuna_module().trial.TrialState.WAITING, optuna_module().trial.TrialState.FAIL
    for t in study.get_trials(deepcopy=False):
        if t.state == waiting or t.user_attrs.get("grid_drained") or t.user_attrs.get(WITHDRAWN):
            continue  # a queued grid point not started yet (or taken back); a worker's draw after the queue ran out
        row: dict[str, Any] = {"trial": t.number, "run": f"trials/trial-{t.number:03d}"}
        row.update({d.key: t.params.get(d.key) for d in dims})
        value = (
            t.value
            if t.value is not None
            else (max(t.intermediate_values.values()) if t.intermediate_values else None)
        )
        row.update(
            best_val_acc=value,
            epochs_run=t.user_attrs.get("epochs_run", 0),
            test_acc=t.user_attrs.get("test_acc"),
            state=t.state.name.lower(),
        )
        if t.user_attrs.get("error"):
            row["state"] += ": " + t.user_attrs["error"]
        elif t.state == fail:
            row["state"] = "stopped"  # Ctrl-C or a crash, not the trial's error: it runs again
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """trials.csv and trials.md."""
    cols = list(rows[0]) if rows else ["trial"]
    from clfkit.util.atomic import atomic_open

    with atomic_open(out / "trials.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    epochs = sum(r["epochs_run"] for r in rows)
    pruned = sum(r["state"] == "pruned" for r in rows)
    head = f"{len(rows)} trial(s), {pruned} pruned, {epochs} epochs trained in all; best val acc is the objective."
    write_text(out / "trials.md", head + "\n\n" + "\n".join(lines) + "\n")
    return [out / "trials.csv", out / "trials.md"]


def write_plots(study: Any, out: Path, log: Callable[[str], None]) -> list[Path]:
    """history.png and importance.png with Optuna's own matplotlib plots (pyplot figures,
    closed here); importance needs two finished trials with differing params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import warnings

    from optuna.visualization import matplotlib as ovm

    files = []
    for name, plot in (
        ("history.png", ovm.plot_optimization_history),
        ("importance.png", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings from optuna.visualization
                ax = plot(study)
        except (ValueError, RuntimeError) as e:
            log(f"{name} not drawn: {e}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files.append(out / name)
    return files


def write_best(setup: TuneSetup, study: Any) -> Optional[Path]:
    """best.yaml: the base recipe with the best trial's values, named ``<name>-best``."""
    states = optuna_module().trial.TrialState
    if not study.get_trials(deepcopy=False, states=(states.COMPLETE,)):
        return None
    best = study.best_trial
    # a name at the length limit stays in it: best.yaml failing after every trial lost the tables' report
    name = f"{str(setup.base.get('name', 'tuned'))[: MAX_LENGTH - len('-best')]}-best"
    recipe = validate_recipe(trial_recipe(setup, best.params, name), source="best.yaml")
    text = (
        f"# clfkit tune {setup.recipe_path}: trial {best.number}, best val acc {best.value:.4f}\n"
        f"# " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()) + "\n" + recipe.to_yaml()
    )
    write_text(Path(setup.out) / "best.yaml", text)
    return Path(setup.out) / "best.yaml"


def write_results(setup: TuneSetup, log: Callable[[str], None]) -> TuneResult:
    """Tables, plots, best.yaml and report.html from the study as it is now."""
    from clfkit.run.report_page import write_folder_report

    out = Path(setup.out)
    study = open_study(setup)
    rows = trial_rows(study, setup.dims)
    files = write_tables(out, rows)
    best = write_best(setup, study)
    files += [best] if best else []
    figures = write_plots(study, out, log)
    files += figures
    pruned = sum(r["state"] == "pruned" for r in rows)
    pruning = (
        "no pruning"
        if setup.pruner == "none"
        else f"{setup.pruner} pruner from epoch {first_prune_epoch(setup)}"
    )
    intro = (
        f"clfkit tune {setup.recipe_path}: {len(rows)} trial(s), {pruned} pruned ({setup.sampler} sampler, {pruning}), "
        f"{sum(r['epochs_run'] for r in rows)} epochs trained; space: "
        + "; ".join(d.describe() for d in setup.dims)
    )
    files.append(
        write_folder_report(
            out,
            f"tune {out.name}",
            intro,
            rows,
            [
                ("Val accuracy per trial", out / "history.png"),
                ("Parameter importance", out / "importance.png"),
            ],
        )
    )
    best_row = max(
        (r for r in rows if r["state"] == "complete"), key=lambda r: r["best_val_acc"], default=None
    )
    return TuneResult(out, rows, best_row, files)
