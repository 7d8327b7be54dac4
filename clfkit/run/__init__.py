"""The run folder and everything in it: :mod:`~clfkit.run.run_folder` (every file name, the lock,
"finished", creating a new folder), :mod:`~clfkit.run.checkpoint` (checkpoint format and
checks), :mod:`~clfkit.run.resume` (the training state in last.pt), :mod:`~clfkit.run.metrics_log`
(metrics.csv, TensorBoard), :mod:`~clfkit.run.reader` (reading runs back for compare, sweep and
eval), :mod:`~clfkit.run.per_class` and :mod:`~clfkit.run.plots` (per-class tables and figures).

It may import clfkit.train.engine (RNG and DDP state for resume) and the layers below (recipe,
build, data), never the trainer or the CLI.
"""
