"""clfkit: a plugin-based image-classification toolkit.

The public surface is small: :mod:`clfkit.registry` (register and create components),
:mod:`clfkit.recipe` (load and validate recipes), :func:`clfkit.train.trainer.train`,
:func:`clfkit.deploy.export.export_run`, :func:`clfkit.deploy.batch_predict.predict_folder` and
:class:`clfkit.Predictor` (``from clfkit import Predictor``).
"""

import os as _os

# albumentations checks PyPI for a newer release on import; that costs a network timeout
# on an offline machine. clfkit never wants it.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# torch's OpenMP threads spin while they wait for each other (libgomp's default). On a CPU that
# anything else is using (another run, a browser, a shared VM), a spinning thread holds the core
# the thread it waits for needs: a small CNN's epoch on 2 cores went from 0.45 s to 2.5-5 s with
# one other busy process, and to 0.8-1.3 s with passive waiting (docs/performance.md). Read when
# torch first loads OpenMP, so it must be set before that; an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazily, so that ``import clfkit`` stays light (no onnxruntime, no torch) for every command.
    if name in ("Predictor", "Prediction"):
        from clfkit.deploy import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'clfkit' has no attribute {name!r}")
