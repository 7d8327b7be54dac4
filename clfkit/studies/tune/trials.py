"""The trials of a tune: one trial (a training run whose epochs report to the pruner) and
the loop that runs them, in the tune process or in each ``--jobs`` worker
(clfkit.studies.tune.workers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clfkit.errors import ClfkitError
from clfkit.recipe import validate_recipe
from clfkit.util.signals import Interrupted, StopFlag
from clfkit.studies.tune.space import optuna_module
from clfkit.studies.tune.study import TuneSetup, counted, open_study, queued, trial_recipe


class TrialFailed(Exception):
    """One trial's training failed (a clfkit error); Optuna records it and the search goes on.
    Not a ClfkitError on purpose: Optuna's ``catch`` must not also catch a stop signal."""


# --------------------------------------------------------------------------- one trial
class PruneOnEpoch:
    """A tracker (clfkit.run.tracking) that reports each epoch's val acc to the Optuna trial and
    stops the run (optuna.TrialPruned) when the pruner says so."""

    def __init__(self, trial: Any):
        self.trial = trial

    def epoch(self, row: dict[str, Any]) -> None:
        self.trial.set_user_attr("epochs_run", int(row["epoch"]))
        if row.get("val_acc") is None:
            return  # nothing honest to prune on without a val split
        self.trial.report(float(row["val_acc"]), step=int(row["epoch"]))
        if self.trial.should_prune():
            raise optuna_module().TrialPruned(f"val acc {row['val_acc']:.4f} at epoch {row['epoch']}")


def _objective(setup: TuneSetup, stop: StopFlag) -> Callable[[Any], float]:
    from clfkit.train.trainer import train

    def objective(trial: Any) -> float:
        if stop.pending:  # the signal came between two trials: this one must not start training
            trial.study.stop()
            raise Interrupted("stopped before the trial started", stop.signum)
        if setup.sampler == "grid" and not _queued_values(trial):
            # another --jobs worker took the last queued point between our check and this trial
            trial.set_user_attr("grid_drained", True)
            trial.study.stop()
            raise TrialFailed("no grid point left")
        params = {d.key: d.suggest(trial) for d in setup.dims}
        name = f"trial-{trial.number:03d}"
        recipe = validate_recipe(trial_recipe(setup, params, name), source=f"trial {trial.number}")
        run_dir = Path(setup.out) / "trials" / name
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            summary = train(
                recipe, run_dir=run_dir, quiet=setup.quiet, trackers=(PruneOnEpoch(trial),)
            ).summary
        except Interrupted:
            raise  # a stop signal ends the search (the trial is marked failed)
        except ClfkitError as e:  # e.g. a non-finite loss at a high lr: this trial fails, the search goes on
            trial.set_user_attr("error", str(e).splitlines()[0][:300])
            raise TrialFailed(str(e)) from None
        trial.set_user_attr("test_acc", summary.get("test_acc"))
        return float(summary["best_val_acc"])  # a val split: checked before the first trial (check_val_split)

    return objective


def optimize(setup: TuneSetup, stop: StopFlag | None = None) -> None:
    """Run trials until the study holds ``setup.trials`` finished or pruned ones (one process;
    also the body of each --jobs worker). ``stop`` set by a signal: no further trial starts."""
    optuna = optuna_module()
    if setup.threads:
        import torch

        torch.set_num_threads(setup.threads)
    study = open_study(setup)
    if setup.sampler == "grid":  # run_tune queued the points; each worker takes them until none wait
        remaining, stop_rule = queued(study), _stop_when_queue_empty
    else:  # MaxTrialsCallback: parallel workers stop together at the total
        remaining = max(0, setup.trials - counted(study, setup))
        states = optuna.trial.TrialState
        stop_rule = optuna.study.MaxTrialsCallback(setup.trials, states=(states.COMPLETE, states.PRUNED))
    stop = stop or StopFlag()

    def stop_on_signal(study: Any, trial: Any) -> None:
        if stop.pending:
            study.stop()

    if remaining:
        study.optimize(
            _objective(setup, stop),
            n_trials=remaining,
            catch=(TrialFailed,),
            callbacks=[stop_rule, stop_on_signal],
        )


def _queued_values(trial: Any) -> dict[str, Any]:
    """The values a queued trial was given (enqueue_trial), {} for a drawn one."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return frozen.system_attrs.get("fixed_params", {})


def _stop_when_queue_empty(study: Any, trial: Any) -> None:
    if not queued(study):
        study.stop()
