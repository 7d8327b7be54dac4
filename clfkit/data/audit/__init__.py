"""Data audit: what is wrong with a dataset before it inflates a result.

The parts here need numpy and PIL only (the train-time checks run with clfkit's runtime
dependencies); the checks that need a trained model (label errors, feature neighbours) and the
report live in :mod:`clfkit.audit`.

- ``records``: one small record per image file (pixel hash, perceptual hash, size, mode,
  CleanVision-style quality scores), decoded once with every core and cached by file content.
- ``neighbours``: nearest neighbours across splits by a blocked matrix product (perceptual
  hashes as +-1 vectors, or a model's features), never a Python loop over pairs.
- ``findings``: records -> findings (exact duplicates, leaks, conflicts, near-duplicates,
  quality issues, class balance).
- ``quick``: the cheap checks at the start of every ``train``, on the decoded tensors.
"""
