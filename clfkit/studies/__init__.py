"""Many runs of one recipe: :mod:`~clfkit.studies.sweep` (grids and ablations) and
:mod:`~clfkit.studies.tune` (Optuna trials), their tables, plots and pages.

Nothing is imported here: ``clfkit sweep`` needs no Optuna."""
