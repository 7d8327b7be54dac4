"""Sweeps: one recipe, a grid of overrides, one run folder per combination, and a table of
the runs ranked by best val accuracy.

    clfkit sweep RECIPE --grid optim.lr=1e-3,5e-4 --grid model.head_dropout=0,0.3 --jobs 2

or a sweep file: a recipe with a ``sweep:`` block (removed before the recipe is validated)::

    sweep:
      optim.lr: [1.0e-3, 5.0e-4]            # a grid axis: dotted path -> values
      model.norm: {bn: batch, no_bn: none}  # labelled values: the label names the run
      variants:                             # one axis of named override sets (ablations)
        full: {}
        wo_drop: {model.head_dropout: 0.0}

The runs are the Cartesian product of the axes. Each run folder is named by its values
(``lr=0.001,norm=bn``) under ``--out`` (default ``sweeps/<recipe name>``). Running the same
sweep again skips finished runs (those with summary.json), resumes unfinished ones from their
last.pt when the trainer can, and restarts the others. At the end it writes::

    sweep.csv, sweep.md   one row per run, best val acc first: the varied values, best val acc,
                          its epoch, train acc and test acc at that epoch, wall time
    sweep.json            the base recipe, the axes and every run's values
    compare.png           the top 10 runs' curves overlaid (see clfkit.run.plots.plot_compare)

The package: :mod:`~clfkit.studies.sweep.plan` (axes and trials), :mod:`~clfkit.studies.sweep.running`
(training them, stop signals, worker processes), :mod:`~clfkit.studies.sweep.tables` (the results).
"""

from __future__ import annotations

from clfkit.studies.sweep.plan import Axis, Sweep, SweepError, Trial, axes_from_block, parse_grid, plan_sweep
from clfkit.studies.sweep.running import run_sweep, run_trial
from clfkit.studies.sweep.tables import write_tables

__all__ = [
    "Axis",
    "Sweep",
    "SweepError",
    "Trial",
    "axes_from_block",
    "parse_grid",
    "plan_sweep",
    "run_sweep",
    "run_trial",
    "write_tables",
]
