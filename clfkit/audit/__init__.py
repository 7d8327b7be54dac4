"""``clfkit data check``: duplicates, leaks across splits, likely label errors and image-quality
issues of a folder dataset, with or without a trained model.

- ``check``: the library function :func:`check_data` (catalog -> findings -> DataCheck);
- ``model_outputs``: a run's probabilities and penultimate features; cross-validated folds;
- ``model_findings``: label errors (cleanlab) and feature neighbours;
- ``report``, ``page``: the console table, data_check.json, leaked_files.csv, data_check.html.

The model-free parts (records, hashes, neighbours, findings, the train-time checks) live in
:mod:`clfkit.data.audit`, below the trainer, which runs the cheap ones at the start of a run.
"""
