"""Leaves every layer may use (they import nothing of clfkit but :mod:`clfkit.errors`):
:mod:`~clfkit.util.atomic` (atomic file writes), :mod:`~clfkit.util.safe_names` (the rule for
names that become folder names), :mod:`~clfkit.util.yaml_text` (the one YAML/value parser),
:mod:`~clfkit.util.signals` (stop signals), :mod:`~clfkit.util.progress` (a run's console
progress) and :mod:`~clfkit.util.did_you_mean` (the one suggestion helper)."""
