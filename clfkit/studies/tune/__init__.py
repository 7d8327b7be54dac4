"""``clfkit tune``: a hyperparameter search on Optuna, with pruning.

    clfkit tune RECIPE --trials 20 --space 'optim.lr=loguniform(1e-4,1e-1)' \\
        --space 'model.dropout=uniform(0,0.5)' --space 'train.batch_size=choice(64,128,256)'

Each trial trains the recipe with values drawn by a seeded TPE (or random) sampler, or taken
from the queue of a grid (``--sampler grid``). After every epoch the
trial's val accuracy goes to the pruner (a bottom-quarter, median or successive-halving rule) through the
trainer's tracker hook (clfkit.run.tracking), and a trial that falls behind stops there: pruned
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

The package: :mod:`~clfkit.studies.tune.space` (--space, the grid), :mod:`~clfkit.studies.tune.study` (the
Optuna study, its sampler, pruner and checks), :mod:`~clfkit.studies.tune.results` (tables, plots,
best.yaml, report.html); here: one trial, the run loop and the command.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Callable, Iterator, Optional

from clfkit.util.safe_names import check_name
from clfkit.recipe import apply_override, parse_overrides, read_yaml, validate_recipe
from clfkit.util.signals import Interrupted, catch_stop_signals
from clfkit.studies.sweep.plan import MAX_RUNS, check_jobs
from clfkit.studies.tune.results import TuneResult, trial_rows, write_results
from clfkit.studies.tune.space import Dimension, TuneError, check_space, grid_size, parse_space
from clfkit.studies.tune.study import (
    PRUNERS,
    SAMPLERS,
    TuneSetup,
    counted,
    fail_stale_trials,
    first_prune_epoch,
    make_pruner,
    make_sampler,
    open_study,
    pruning_start,
    queue_grid,
    trial_recipe,
)
from clfkit.studies.tune.study_data import check_study_data, check_val_split
from clfkit.studies.tune.trials import optimize

GRID_POINTS = 100_000  # a grid tune enumerates (and shuffles) every point before it walks --trials of them

__all__ = [
    "Dimension",
    "TuneError",
    "TuneResult",
    "TuneSetup",
    "check_space",
    "first_prune_epoch",
    "make_pruner",
    "make_sampler",
    "parse_space",
    "plan_tune",
    "pruning_start",
    "run_tune",
    "trial_recipe",
    "trial_rows",
]


# --------------------------------------------------------------------------- the command
def _refuse_set_on_space(key: str, dims: list[Dimension]) -> None:
    """A --set on a searched field (or inside it) would be replaced by every trial's value."""
    for d in dims:
        if key == d.key or key.startswith(d.key + "."):
            raise TuneError(
                f"--set {key} is searched by --space {d.text or d.describe()}; every trial would "
                f"replace it. Drop the --set, or the --space"
            )


def plan_tune(
    recipe_path: str | Path,
    spaces: list[str] | tuple[str, ...],
    *,
    trials: Optional[int],
    overrides: list[str] | tuple[str, ...] = (),
    out: Optional[str | Path] = None,
    seed: int = 0,
    pruner: str = "quartile",
    quiet: bool = True,
    sampler: str = "tpe",
    prune_from: Optional[int] = None,
) -> TuneSetup:
    """Read the recipe, apply --set, parse and check every --space; nothing runs yet.
    ``trials`` None: 20, or the whole grid with ``sampler="grid"``."""
    if not spaces:
        raise TuneError("give at least one --space, e.g. --space 'optim.lr=loguniform(1e-4,1e-1)'")
    if pruner not in PRUNERS:
        raise TuneError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise TuneError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if not 0 <= seed < 2**32:
        raise TuneError(f"--seed {seed}: give a seed from 0 to {2**32 - 1}")
    data = read_yaml(recipe_path)
    if "sweep" in data:
        raise TuneError(f"{recipe_path} is a sweep file; tune a plain recipe (remove its sweep: block)")
    dims = [parse_space(s) for s in spaces]
    for keys, value in parse_overrides(overrides):
        _refuse_set_on_space(".".join(keys), dims)
        apply_override(data, keys, value)
    base = validate_recipe(data, source=str(recipe_path))
    check_space(data, dims, str(recipe_path))
    trials = _trials_for(sampler, dims, trials)
    out = Path(out) if out is not None else Path("tunes") / check_name(base.name, "tune name")
    _check_tune_folder(out)
    epochs = next((max(d.args) for d in dims if d.key == "train.epochs"), base.train.epochs)
    if prune_from is not None and not 1 <= prune_from <= epochs:
        raise TuneError(
            f"--prune-from {prune_from}: a trial runs {epochs} epoch(s); give 1 to {epochs} "
            f"(or --pruner none to prune nothing)"
        )
    return TuneSetup(
        str(recipe_path),
        data,
        dims,
        str(out),
        trials,
        seed,
        pruner,
        quiet,
        track=list(base.train.track),
        sampler=sampler,
        epochs=int(epochs),
        prune_from=prune_from,
    )


def _check_tune_folder(out: Path) -> None:
    """--out is new, empty, or a tune folder (it has study.db): a tune writes report.html,
    best.yaml and trials/ there, which in a run or sweep folder would replace its own files."""
    if out.exists() and not out.is_dir():
        raise TuneError(f"--out {out} is a file; give a folder for the tune")
    if not out.is_dir() or (out / "study.db").exists():
        return
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if held:
        raise TuneError(
            f"--out {out} is not a tune folder (no study.db; it holds {', '.join(held[:4])}"
            f"{', ...' if len(held) > 4 else ''}): the tune's files would mix with or replace "
            f"those. Give a new or empty folder, or a tune folder to continue"
        )


def _trials_for(sampler: str, dims: list[Dimension], trials: Optional[int]) -> int:
    """--trials as given, else 20; a grid needs choice() dimensions and has at most its size."""
    if sampler != "grid":
        return 20 if trials is None else trials
    ranged = [d.text or d.describe() for d in dims if d.kind != "choice"]
    if ranged:
        raise TuneError(
            f"--sampler grid walks choice() values; {', '.join(ranged)} is a range. Give it as "
            f"choice(v1,v2,...), or use --sampler tpe"
        )
    size = grid_size(dims)
    if trials is not None and trials > size:
        raise TuneError(
            f"--trials {trials}: the grid has {size} combination(s); give --trials {size} or fewer"
        )
    # as a sweep plans at most MAX_RUNS runs: a grid of a million points would be queued for hours
    if size > GRID_POINTS or (trials or size) > MAX_RUNS:
        raise TuneError(
            f"--sampler grid: the space has {size:,} combinations"
            + (f", --trials {trials:,}" if trials else "")
            + f"; a grid tune walks at most {MAX_RUNS:,} of at most {GRID_POINTS:,}. Give fewer choice() "
            f"values or --trials {MAX_RUNS} or fewer, or use --sampler tpe or random"
        )
    return size if trials is None else trials


def run_tune(setup: TuneSetup, jobs: int = 1, log: Callable[[str], None] = print) -> TuneResult:
    """Run the study to ``setup.trials`` trials (continuing one already in the folder), then
    write its results. A stop signal ends it cleanly: results are written for the trials so
    far and :class:`Interrupted` says how to continue."""
    from clfkit.run.tracking import require_trackers

    check_jobs(jobs, "trials", TuneError)
    require_trackers(setup.track)  # a store that cannot be used fails before the tune folder exists
    out = Path(setup.out)
    out.mkdir(parents=True, exist_ok=True)
    with _tune_lock(out):
        return _run_locked(setup, jobs, log)


@contextlib.contextmanager
def _tune_lock(out: Path) -> Iterator[None]:
    """One tune per folder: a second one on the same study.db marked the first's running trial
    failed (its stale-trial sweep), and the first then died telling Optuna that trial's result."""
    from clfkit.run.run_folder import LOCK_NAME, RunLockedError, _holder_text, run_lock

    try:
        with run_lock(out, "tune into"):
            yield
    except RunLockedError:
        holder = _holder_text(out / LOCK_NAME)  # the run lock's message speaks of runs and --resume
        raise TuneError(
            f"cannot tune into {out}: another clfkit tune is running there ({holder}); two tunes on "
            f"one study would fail each other's trials. Wait for it to finish, or stop it (Ctrl-C) "
            f"and run the same command again"
        ) from None


def _run_locked(setup: TuneSetup, jobs: int, log: Callable[[str], None]) -> TuneResult:
    from clfkit.run.tracking import parent_run
    from clfkit.studies.tune.workers import run_jobs

    out = Path(setup.out)
    study = open_study(setup)
    check_val_split(setup)  # before the first trial, not after it
    check_study_data(study, setup, log)  # trials ranked on one val set
    fail_stale_trials(study)
    if setup.sampler == "grid":
        queue_grid(study, setup)
    done = counted(study, setup)
    if done > setup.trials:  # a study continued with a smaller --trials
        log(f"tune {out}: {done} trial(s) already done, --trials {setup.trials} asks for no more")
    else:
        log(
            f"tune {out}: {done} of {setup.trials} trial(s) already done"
            + (f", {jobs} at a time" if jobs > 1 else "")
        )
    params = {
        "recipe": setup.recipe_path,
        "trials": str(setup.trials),
        "pruner": setup.pruner,
        "sampler": setup.sampler,
        "prune_from": str(first_prune_epoch(setup)),
        "space": "; ".join(d.describe() for d in setup.dims),
    }
    signum: Optional[int] = None
    with parent_run(f"tune {out.name}", params, out, "mlflow" in setup.track), catch_stop_signals() as stop:
        try:
            if jobs <= 1:
                optimize(setup, stop)
            else:
                signum = run_jobs(setup, jobs, stop, log)
        except Interrupted as e:
            signum = e.signum
        except TuneError:  # a worker's error: the trials so far still get their tables
            write_results(setup, log)
            raise
        result = write_results(setup, log)
    signum = signum or stop.signum
    if signum is not None:
        raise Interrupted(
            f"{signal.Signals(signum).name} received: tune stopped after {counted(study, setup)} of "
            f"{setup.trials} trial(s); results so far are in {out}. Run the same command again to "
            f"continue the study (a stopped trial runs again)",
            signum,
        )
    return result
