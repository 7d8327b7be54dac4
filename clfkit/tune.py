"""``clfkit tune``: a hyperparameter search on Optuna, with pruning.

    clfkit tune RECIPE --trials 20 --space 'optim.lr=loguniform(1e-4,1e-1)' \\
        --space 'model.dropout=uniform(0,0.5)' --space 'train.batch_size=choice(64,128,256)'

Each trial trains the recipe with values drawn by a seeded TPE sampler. After every epoch the
trial's val accuracy goes to the pruner (a median or successive-halving rule) through the
trainer's tracker hook (clfkit.tracking), and a trial that falls behind stops there: pruned
trials cost a few epochs instead of the full run. The tune folder (``tunes/<recipe name>``)::

    study.db              the Optuna study (SQLite): running the same command again continues it
    trials/trial-NNN/     one run folder per trial (a pruned one has no summary.json)
    trials.csv trials.md  trial, params, best val acc, epochs run, state
    best.yaml             the best trial's recipe, ready for ``clfkit train``
    history.png           val accuracy per trial (optuna.visualization.matplotlib)
    importance.png        each parameter's importance (the same; needs 2+ finished trials)
    report.html           the table and both figures on one page

A space is ``dotted.path=kind(args)``: ``uniform(lo,hi)``, ``loguniform(lo,hi)``,
``int(lo,hi)``, ``logint(lo,hi)``, ``choice(v1,v2,...)``; values are read as ``--set`` reads
them, and the path and every bound are checked by validating the recipe with that value, so a
typo or an out-of-range bound fails with the recipe's own message before any trial runs.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

from clfkit.errors import ClfkitError
from clfkit.atomic import write_text
from clfkit.names import check_name
from clfkit.recipe import apply_override, parse_override, read_yaml, validate_recipe
from clfkit.signals import Interrupted
from clfkit.sweep.plan import split_top_level
from clfkit.yamltext import YAMLProblem, parse_value

KINDS = {"uniform": 2, "loguniform": 2, "int": 2, "logint": 2, "choice": None}  # kind -> argument count
PRUNERS = ("median", "halving", "none")
SAMPLERS = ("tpe", "grid", "random")
STUDY_NAME = "clfkit"


class TuneError(ClfkitError):
    """A tune that cannot run: a bad --space, a study of another space, optuna missing."""


class TrialFailed(Exception):
    """One trial's training failed (a clfkit error); Optuna records it and the search goes on.
    Not a ClfkitError on purpose: Optuna's ``catch`` must not also catch a stop signal."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError('clfkit tune needs Optuna: pip install -e ".[tune]" (or pip install optuna)') from None
    return optuna


# --------------------------------------------------------------------------- the search space
@dataclass
class Dimension:
    """One searched field: ``key`` (dotted path), ``kind`` (see KINDS) and its arguments."""

    key: str
    kind: str
    args: list[Any]
    text: str = ""

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.args)
        lo, hi = self.args
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, lo, hi, log=self.kind == "logint")
        return trial.suggest_float(self.key, float(lo), float(hi), log=self.kind == "loguniform")

    def describe(self) -> str:
        return f"{self.key}={self.kind}({','.join(map(str, self.args))})"


def parse_space(text: str) -> Dimension:
    """``"optim.lr=loguniform(1e-4,1e-1)"`` -> Dimension; the shape only (see check_space)."""
    key, _, spec = text.partition("=")
    try:
        path, _ = parse_override(f"{key.strip()}=0")  # the dotted-path rule of --set
    except ClfkitError:
        raise TuneError(f"--space {text!r}: expected dotted.path=kind(args), e.g. optim.lr=loguniform(1e-4,1e-1)") from None
    m = re.fullmatch(r"\s*([a-z]+)\s*\((.*)\)\s*", spec, re.S)
    if not m or m.group(1) not in KINDS:
        raise TuneError(f"--space {text!r}: the value must be one of {', '.join(k + '(...)' for k in KINDS)}")
    kind = m.group(1)
    try:
        args = [parse_value(a) for a in split_top_level(m.group(2))]
    except YAMLProblem as e:
        raise TuneError(f"--space {text!r}: {e}") from None
    need = KINDS[kind]
    if need is not None and len(args) != need:
        raise TuneError(f"--space {text!r}: {kind} takes {need} values (low, high), got {len(args)}")
    if need is not None:
        numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
        if not numbers or not args[0] < args[1]:
            raise TuneError(f"--space {text!r}: {kind} needs two numbers, low < high")
        if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
            raise TuneError(f"--space {text!r}: {kind} needs whole numbers")
        if kind.startswith("log") and args[0] <= 0:
            raise TuneError(f"--space {text!r}: {kind} needs low > 0")
    if kind == "choice" and (not args or len(set(map(repr, args))) != len(args)):
        raise TuneError(f"--space {text!r}: choice needs distinct values")
    return Dimension(".".join(path), kind, args, text)


def check_space(data: dict, dims: list[Dimension], source: str) -> None:
    """Validate the recipe with each bound (or choice) of each dimension in place, so a wrong
    path (with its did-you-mean), a wrong type or an out-of-range bound is the recipe's own
    error, named by its --space. Two dimensions on one path are refused."""
    seen = [d.key for d in dims]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise TuneError(f"--space: {', '.join(twice)} given more than once")
    for d in dims:
        for value in d.args:  # each choice, or both bounds: values the field must accept
            trial = copy.deepcopy(data)
            apply_override(trial, d.key.split("."), value)
            validate_recipe(trial, source=f"{source} with --space {d.text or d.describe()} ({d.key}={value!r})")


# --------------------------------------------------------------------------- one trial
class PruneOnEpoch:
    """A tracker (clfkit.tracking) that reports each epoch's val acc to the Optuna trial and
    stops the run (optuna.TrialPruned) when the pruner says so."""

    def __init__(self, trial: Any):
        self.trial = trial

    def epoch(self, row: dict[str, Any]) -> None:
        self.trial.set_user_attr("epochs_run", int(row["epoch"]))
        if row.get("val_acc") is None:
            return  # nothing honest to prune on without a val split
        self.trial.report(float(row["val_acc"]), step=int(row["epoch"]))
        if self.trial.should_prune():
            raise _optuna().TrialPruned(f"val acc {row['val_acc']:.4f} at epoch {row['epoch']}")


@dataclass
class TuneSetup:
    """What every trial needs (picklable: it travels to --jobs worker processes)."""

    recipe_path: str
    base: dict[str, Any]          # the recipe file's mapping with --set applied
    dims: list[Dimension]
    out: str
    trials: int
    seed: int
    pruner: str
    quiet: bool = True
    sampler: str = "tpe"          # tpe | grid (every combination of choice() values) | random
    epochs: int = 1               # a full trial's epochs (the most a searched train.epochs allows)
    threads: int = 0
    track: list[str] = field(default_factory=list)


def trial_recipe(setup: TuneSetup, params: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe mapping of one trial: the base with ``params`` applied, named ``name``."""
    data = copy.deepcopy(setup.base)
    for key, value in params.items():
        apply_override(data, key.split("."), value)
    data["name"] = name
    return data


def _objective(setup: TuneSetup) -> Callable[[Any], float]:
    from clfkit.trainer import train

    def objective(trial: Any) -> float:
        params = {d.key: d.suggest(trial) for d in setup.dims}
        name = f"trial-{trial.number:03d}"
        recipe = validate_recipe(trial_recipe(setup, params, name), source=f"trial {trial.number}")
        run_dir = Path(setup.out) / "trials" / name
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            summary = train(recipe, run_dir=run_dir, quiet=setup.quiet, trackers=(PruneOnEpoch(trial),)).summary
        except Interrupted:
            raise  # a stop signal ends the search (the trial is marked failed)
        except ClfkitError as e:  # e.g. a non-finite loss at a high lr: this trial fails, the search goes on
            trial.set_user_attr("error", str(e).splitlines()[0][:300])
            raise TrialFailed(str(e)) from None
        trial.set_user_attr("test_acc", summary.get("test_acc"))
        score = summary.get("best_val_acc")
        if score is None:
            raise TuneError("clfkit tune ranks trials by val accuracy: the data needs a val split "
                            "(data.val_fraction > 0)")
        return float(score)
    return objective


def open_study(setup: TuneSetup) -> Any:
    """Create, or load and continue, the study in ``out/study.db``; a study searched over
    another space is refused (its trials would not be comparable)."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are in the table
    study = optuna.create_study(storage=f"sqlite:///{Path(setup.out).resolve() / 'study.db'}",
                                study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
                                sampler=make_sampler(setup, 0), pruner=make_pruner(setup))
    space = [d.describe() for d in setup.dims]
    had = study.user_attrs.get("space")
    if had is None:
        study.set_user_attr("space", space)
        study.set_user_attr("recipe", setup.recipe_path)
    elif had != space:
        raise TuneError(f"{setup.out}/study.db searched {had}, not {space}; use another --out for a new space")
    _check_same_base(study, setup)
    _check_same_sampler(study, setup)
    # a continued study would otherwise redraw the first run's values (same seed, fresh sampler)
    study.sampler = make_sampler(setup, len(study.get_trials(deepcopy=False)))
    return study


def pruning_start(epochs: int) -> int:
    """The first epoch a trial may be pruned at: a third of the run. Val accuracy after one
    epoch of a 6-epoch run ranks trials poorly (a high lr starts low and ends best), and pruning
    there cost the measured flowers5 study its best region (README "Tuning")."""
    return max(1, round(epochs / 3))


def make_pruner(setup: TuneSetup) -> Any:
    """--pruner as an Optuna pruner, scaled to the run: nothing is pruned before
    :func:`pruning_start`; halving's first rung is there too."""
    pruners = _optuna().pruners
    start = pruning_start(setup.epochs)
    if setup.pruner == "median":  # step = epoch (1-based); Optuna prunes from step n_warmup_steps on
        return pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=start)
    if setup.pruner == "halving":
        return pruners.SuccessiveHalvingPruner(min_resource=start, reduction_factor=3)
    return pruners.NopPruner()


def make_sampler(setup: TuneSetup, drawn: int) -> Any:
    """--sampler as an Optuna sampler, seeded by --seed and the trials already drawn. TPE's
    random start is a third of --trials (2 to 10): Optuna's fixed 10 would leave a 12-trial
    study nearly all random. grid walks every combination of the choice() values in a seeded
    order, each once."""
    samplers = _optuna().samplers
    seed = setup.seed + drawn
    if setup.sampler == "grid":
        return samplers.GridSampler({d.key: list(d.args) for d in setup.dims}, seed=seed)
    if setup.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    return samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, setup.trials // 3)))


def grid_size(dims: list[Dimension]) -> int:
    """How many combinations --sampler grid walks."""
    size = 1
    for d in dims:
        size *= len(d.args)
    return size


def _check_same_sampler(study: Any, setup: TuneSetup) -> None:
    """One study, one sampler: a grid continued by TPE (or back) would count and order its
    trials by two rules. Studies from before --sampler existed are TPE studies."""
    had = study.user_attrs.get("sampler")
    if had is None:
        had = "tpe" if study.get_trials(deepcopy=False) else setup.sampler
        study.set_user_attr("sampler", had)
    if had != setup.sampler:
        raise TuneError(f"{setup.out}/study.db was searched with --sampler {had}, not {setup.sampler}; "
                        f"continue it with --sampler {had}, or use another --out for a new study")


def _check_same_base(study: Any, setup: TuneSetup) -> None:
    """Trials of one study must share the fixed recipe (file + --set), else the table and
    best.yaml mix runs trained under other settings."""
    base = json.loads(json.dumps(setup.base, sort_keys=True, default=str))
    had = study.user_attrs.get("base")
    if had is None:
        study.set_user_attr("base", base)
        return
    if had != base:
        where = _first_change(had, base) or "<root>"
        raise TuneError(f"{setup.out}/study.db was run with another recipe or --set (they differ at {where}); "
                        f"run the same recipe and --set to continue it, or use another --out for a new study")


def _first_change(a: Any, b: Any, path: str = "") -> Optional[str]:
    """The dotted path of the first difference between two JSON-like values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return sub
            found = _first_change(a[key], b[key], sub)
            if found:
                return found
        return None
    return None if a == b else (path or "<root>")


def _counted(study: Any) -> int:
    """Trials that count toward --trials: finished or pruned (failed and stopped ones do not)."""
    states = _optuna().trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))


def _mark_stale_running(study: Any) -> None:
    """A trial left RUNNING by a stopped or crashed tune is marked FAIL, so it is not waited on."""
    states = _optuna().trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=states.FAIL)


def optimize(setup: TuneSetup) -> None:
    """Run trials until the study holds ``setup.trials`` finished or pruned ones (one process;
    also the body of each --jobs worker)."""
    optuna = _optuna()
    if setup.threads:
        import torch

        torch.set_num_threads(setup.threads)
    study = open_study(setup)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = max(0, setup.trials - _counted(study))
    if remaining:  # MaxTrialsCallback: parallel workers stop together at the total
        study.optimize(_objective(setup), n_trials=remaining, catch=(TrialFailed,),
                       callbacks=[optuna.study.MaxTrialsCallback(setup.trials, states=counted)])


def _run_jobs(setup: TuneSetup, jobs: int) -> None:
    """``jobs`` worker processes share the study through its SQLite file."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # each worker's sampler gets its own seed, else all would propose the same values; the
    # total may end up to jobs-1 over --trials (workers check the count when a trial ends)
    workers = [TuneSetup(**{**setup.__dict__, "threads": threads, "seed": setup.seed + i}) for i in range(jobs)]
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for f in [pool.submit(optimize, w) for w in workers]:
            f.result()


# --------------------------------------------------------------------------- results
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
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "run": f"trials/trial-{t.number:03d}"}
        row.update({d.key: t.params.get(d.key) for d in dims})
        value = t.value if t.value is not None else (max(t.intermediate_values.values())
                                                     if t.intermediate_values else None)
        row.update(best_val_acc=value, epochs_run=t.user_attrs.get("epochs_run", 0),
                   test_acc=t.user_attrs.get("test_acc"), state=t.state.name.lower())
        if t.user_attrs.get("error"):
            row["state"] += ": " + t.user_attrs["error"]
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def write_tables(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """trials.csv and trials.md."""
    cols = list(rows[0]) if rows else ["trial"]
    from clfkit.atomic import atomic_open

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
    for name, plot in (("history.png", ovm.plot_optimization_history), ("importance.png", ovm.plot_param_importances)):
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
    states = _optuna().trial.TrialState
    if not study.get_trials(deepcopy=False, states=(states.COMPLETE,)):
        return None
    best = study.best_trial
    name = f"{setup.base.get('name', 'tuned')}-best"
    recipe = validate_recipe(trial_recipe(setup, best.params, name), source="best.yaml")
    text = (f"# clfkit tune {setup.recipe_path}: trial {best.number}, best val acc {best.value:.4f}\n"
            f"# " + ", ".join(f"{k}={v!r}" for k, v in best.params.items()) + "\n" + recipe.to_yaml())
    write_text(Path(setup.out) / "best.yaml", text)
    return Path(setup.out) / "best.yaml"


def write_results(setup: TuneSetup, log: Callable[[str], None]) -> TuneResult:
    """Tables, plots, best.yaml and report.html from the study as it is now."""
    from clfkit.report_html import write_folder_report

    out = Path(setup.out)
    study = open_study(setup)
    rows = trial_rows(study, setup.dims)
    files = write_tables(out, rows)
    best = write_best(setup, study)
    files += [best] if best else []
    figures = write_plots(study, out, log)
    files += figures
    pruned = sum(r["state"] == "pruned" for r in rows)
    intro = (f"clfkit tune {setup.recipe_path}: {len(rows)} trial(s), {pruned} pruned ({setup.sampler} sampler, {setup.pruner} pruner "
             f"from epoch {pruning_start(setup.epochs)}), "
             f"{sum(r['epochs_run'] for r in rows)} epochs trained; space: "
             + "; ".join(d.describe() for d in setup.dims))
    files.append(write_folder_report(out, f"tune {out.name}", intro, rows,
                                     [("Val accuracy per trial", out / "history.png"),
                                      ("Parameter importance", out / "importance.png")]))
    best_row = max((r for r in rows if r["state"] == "complete"), key=lambda r: r["best_val_acc"], default=None)
    return TuneResult(out, rows, best_row, files)


# --------------------------------------------------------------------------- the command
def _refuse_set_on_space(key: str, dims: list[Dimension]) -> None:
    """A --set on a searched field (or inside it) would be replaced by every trial's value."""
    for d in dims:
        if key == d.key or key.startswith(d.key + "."):
            raise TuneError(f"--set {key} is searched by --space {d.text or d.describe()}; every trial would "
                            f"replace it. Drop the --set, or the --space")

def plan_tune(recipe_path: str | Path, spaces: list[str] | tuple[str, ...], trials: Optional[int],
              overrides: list[str] | tuple[str, ...] = (), out: Optional[str | Path] = None,
              seed: int = 0, pruner: str = "median", quiet: bool = True, sampler: str = "tpe") -> TuneSetup:
    """Read the recipe, apply --set, parse and check every --space; nothing runs yet.
    ``trials`` None: 20, or the whole grid with ``sampler="grid"``."""
    if not spaces:
        raise TuneError("give at least one --space, e.g. --space 'optim.lr=loguniform(1e-4,1e-1)'")
    if pruner not in PRUNERS:
        raise TuneError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise TuneError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    data = read_yaml(recipe_path)
    if "sweep" in data:
        raise TuneError(f"{recipe_path} is a sweep file; tune a plain recipe (remove its sweep: block)")
    dims = [parse_space(s) for s in spaces]
    for text in overrides:
        keys, value = parse_override(text)
        _refuse_set_on_space(".".join(keys), dims)
        apply_override(data, keys, value)
    base = validate_recipe(data, source=str(recipe_path))
    check_space(data, dims, str(recipe_path))
    trials = _trials_for(sampler, dims, trials)
    out = Path(out) if out is not None else Path("tunes") / check_name(base.name, "tune name")
    epochs = next((max(d.args) for d in dims if d.key == "train.epochs"), base.train.epochs)
    return TuneSetup(str(recipe_path), data, dims, str(out), trials, seed, pruner, quiet,
                     track=list(base.train.track), sampler=sampler, epochs=int(epochs))


def _trials_for(sampler: str, dims: list[Dimension], trials: Optional[int]) -> int:
    """--trials as given, else 20; a grid needs choice() dimensions and has at most its size."""
    if sampler != "grid":
        return 20 if trials is None else trials
    ranged = [d.text or d.describe() for d in dims if d.kind != "choice"]
    if ranged:
        raise TuneError(f"--sampler grid walks choice() values; {', '.join(ranged)} is a range. Give it as "
                        f"choice(v1,v2,...), or use --sampler tpe")
    size = grid_size(dims)
    if trials is not None and trials > size:
        raise TuneError(f"--trials {trials}: the grid has {size} combination(s); give --trials {size} or fewer")
    return size if trials is None else trials


def run_tune(setup: TuneSetup, jobs: int = 1, log: Callable[[str], None] = print) -> TuneResult:
    """Run the study to ``setup.trials`` trials (continuing one already in the folder), then
    write its results. A stop signal ends it cleanly: results are written for the trials so
    far and :class:`Interrupted` says how to continue."""
    from clfkit.tracking import parent_run

    out = Path(setup.out)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(setup)
    _mark_stale_running(study)
    done = _counted(study)
    log(f"tune {out}: {done} of {setup.trials} trial(s) already done"
        + (f", {jobs} at a time" if jobs > 1 else ""))
    params = {"recipe": setup.recipe_path, "trials": str(setup.trials), "pruner": setup.pruner,
              "sampler": setup.sampler,
              "space": "; ".join(d.describe() for d in setup.dims)}
    stopped: Optional[Interrupted] = None
    with parent_run(f"tune {out.name}", params, out, "mlflow" in setup.track):
        try:
            optimize(setup) if jobs <= 1 else _run_jobs(setup, jobs)
        except (Interrupted, KeyboardInterrupt) as e:
            stopped = e if isinstance(e, Interrupted) else Interrupted("interrupted", 2)
        result = write_results(setup, log)
    if stopped is not None:
        raise Interrupted(f"tune stopped after {_counted(study)} of {setup.trials} trial(s); results so far are "
                          f"in {out}. Run the same command again to continue the study", stopped.signum)
    return result
