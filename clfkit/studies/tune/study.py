"""The Optuna study of a tune folder: what every trial needs (:class:`TuneSetup`), the study in
``study.db`` with its sampler and pruner, the checks that keep one study to one space, recipe
and sampler, and the queue of a grid."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clfkit.recipe import apply_override
from clfkit.run.tracking import sqlite_url
from clfkit.studies.tune.space import Dimension, TuneError, grid_points, optuna_module, point_key

PRUNERS = ("quartile", "median", "halving", "none")
SAMPLERS = ("tpe", "grid", "random")
STUDY_NAME = "clfkit"
WITHDRAWN = "grid_withdrawn"  # user attr of a queued grid point taken back out of the queue


@dataclass
class TuneSetup:
    """What every trial needs (picklable: it travels to --jobs worker processes)."""

    recipe_path: str
    base: dict[str, Any]  # the recipe file's mapping with --set applied
    dims: list[Dimension]
    out: str
    trials: int
    seed: int
    pruner: str
    quiet: bool = True
    sampler: str = "tpe"  # tpe | grid (every combination of choice() values) | random
    epochs: int = 1  # a full trial's epochs (the most a searched train.epochs allows)
    prune_from: Optional[int] = None  # --prune-from: the first epoch a trial may be pruned at
    threads: int = 0
    track: list[str] = field(default_factory=list)


def trial_recipe(setup: TuneSetup, params: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe mapping of one trial: the base with ``params`` applied, named ``name``."""
    data = copy.deepcopy(setup.base)
    for key, value in params.items():
        apply_override(data, key.split("."), value)
    data["name"] = name
    return data


def open_study(setup: TuneSetup) -> Any:
    """Create, or load and continue, the study in ``out/study.db``; a study searched over
    another space is refused (its trials would not be comparable)."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are in the table
    from sqlalchemy.exc import SQLAlchemyError  # optuna's storage layer

    db = Path(setup.out) / "study.db"
    try:
        study = optuna.create_study(
            storage=sqlite_url(db),
            study_name=STUDY_NAME,
            direction="maximize",
            load_if_exists=True,
            sampler=make_sampler(setup, 0),
            pruner=make_pruner(setup),
        )
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).splitlines()[0]
        raise TuneError(
            f"{db} is not a readable Optuna study ({reason}); move it away to start a new "
            f"study there, or give another --out"
        ) from None
    space = [d.describe() for d in setup.dims]
    had = study.user_attrs.get("space")
    if had is None:
        study.set_user_attr("space", space)
        study.set_user_attr("recipe", setup.recipe_path)
    elif sorted(had) != sorted(space):  # the order of the --space options searches nothing else
        raise TuneError(
            f"{setup.out}/study.db searched {had}, not {space}; use another --out for a new space"
        )
    _check_same_base(study, setup)
    _check_same_sampler(study, setup)
    # a continued study would otherwise redraw the first run's values (same seed, fresh sampler)
    study.sampler = make_sampler(setup, len(study.get_trials(deepcopy=False)))
    return study


def pruning_start(epochs: int) -> int:
    """The first epoch a trial may be pruned at by default: a third of the run, past a
    learning-rate warmup and the first noisy epochs (a high lr often starts lowest)."""
    return max(1, round(epochs / 3))


def first_prune_epoch(setup: TuneSetup) -> int:
    """--prune-from, else :func:`pruning_start` of the run's epochs."""
    return setup.prune_from or pruning_start(setup.epochs)


def make_pruner(setup: TuneSetup) -> Any:
    """--pruner as an Optuna pruner; nothing is pruned before :func:`first_prune_epoch` (and
    halving's first rung is there). From then on, at each epoch, a trial whose best val acc so
    far is below the others' at that epoch stops: below their 25th percentile (quartile) or
    their median, or outside the top third of its rung (halving)."""
    pruners = optuna_module().pruners
    start = first_prune_epoch(setup)
    # step = epoch (1-based); Optuna prunes from step n_warmup_steps on, once 2 trials finished
    if setup.pruner == "quartile":  # Optuna's percentile is the share kept for a maximized value
        return pruners.PercentilePruner(75.0, n_startup_trials=2, n_warmup_steps=start)
    if setup.pruner == "median":
        return pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=start)
    if setup.pruner == "halving":
        return pruners.SuccessiveHalvingPruner(min_resource=start, reduction_factor=3)
    return pruners.NopPruner()


def make_sampler(setup: TuneSetup, drawn: int) -> Any:
    """--sampler as an Optuna sampler, seeded by --seed and the trials already drawn. TPE's
    random start is a third of --trials (2 to 10): Optuna's fixed 10 would leave a 12-trial
    study nearly all random. A grid is not drawn: :func:`queue_grid` queues its points (Optuna's
    GridSampler would count a stopped point as visited and never run it again)."""
    samplers = optuna_module().samplers
    seed = (setup.seed + drawn) % 2**32  # numpy's range: a seed near its top plus the trials drawn
    if setup.sampler in (
        "grid",
        "random",
    ):  # a grid's trials take queued values (queue_grid), never drawn ones
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
        raise TuneError(
            f"{setup.out}/study.db was searched with --sampler {had}, not {setup.sampler}; "
            f"continue it with --sampler {had}, or use another --out for a new study"
        )


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
        raise TuneError(
            f"{setup.out}/study.db was run with another recipe or --set (they differ at {where}); "
            f"run the same recipe and --set to continue it, or use another --out for a new study"
        )


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


def counted(study: Any, setup: TuneSetup) -> int:
    """Trials that count toward --trials: finished or pruned ones. A grid counts its points
    done, and a point whose training failed with an error is done (it would fail again).
    A stopped trial (Ctrl-C, a crash) never counts: it runs again."""
    states = optuna_module().trial.TrialState
    if setup.sampler == "grid":
        return len(_grid_done(study, setup))
    return len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))


def _grid_done(study: Any, setup: TuneSetup) -> set[tuple[str, ...]]:
    states = optuna_module().trial.TrialState
    return {
        point_key(t.params, setup.dims)
        for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL))
        if t.params and (t.state != states.FAIL or t.user_attrs.get("error"))
    }


def queue_grid(study: Any, setup: TuneSetup) -> int:
    """Make the study's queue (Optuna's enqueue_trial) the next grid points up to --trials:
    points with no trial done, in the seeded grid order; a stopped point goes back in. Points
    still waiting from a stopped tune of a larger --trials (or twice) are withdrawn, so a
    continued tune runs what this --trials asks, no more. Called once per tune, before any
    worker starts. Returns how many wait."""
    states = optuna_module().trial.TrialState
    done = _grid_done(study, setup)
    todo = [p for p in grid_points(setup.dims, setup.seed) if point_key(p, setup.dims) not in done]
    todo = todo[: max(0, setup.trials - len(done))]
    waiting = [
        point_key(t.system_attrs.get("fixed_params", {}), setup.dims)
        for t in study.get_trials(deepcopy=False, states=(states.WAITING,))
    ]
    wanted = {point_key(p, setup.dims) for p in todo}
    if len(set(waiting)) < len(waiting) or not set(waiting) <= wanted:
        _withdraw_queue(study, len(waiting))
        waiting = []
    for params in todo:
        if point_key(params, setup.dims) not in waiting:
            study.enqueue_trial(params)
    return len(todo)


def queued(study: Any) -> int:
    """Trials waiting in the study's queue (a grid's points not yet started)."""
    return len(study.get_trials(deepcopy=False, states=(optuna_module().trial.TrialState.WAITING,)))


def fail_stale_trials(study: Any) -> None:
    """A trial left RUNNING by a stopped or crashed tune is marked FAIL, so it is not waited on
    (run_tune holds the folder's lock: no other tune is running one of them)."""
    states = optuna_module().trial.TrialState
    for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study.tell(t.number, state=states.FAIL, skip_if_finished=True)


def _withdraw_queue(study: Any, count: int) -> None:
    """Take the ``count`` queued trials out of the queue, through the public API: ask() hands
    out the oldest waiting trial, and it is finished as FAIL marked WITHDRAWN (hidden from the
    table, never run; a FAIL without "error" is not a done point)."""
    for _ in range(count):
        trial = study.ask()
        trial.set_user_attr(WITHDRAWN, True)
        study.tell(trial, state=optuna_module().trial.TrialState.FAIL)
