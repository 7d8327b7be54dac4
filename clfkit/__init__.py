"""clfkit: a plugin-based image-classification toolkit.

The public surface is small: :mod:`clfkit.registry` (register and create components),
:mod:`clfkit.recipe` (load and validate recipes), :func:`clfkit.trainer.train`,
:func:`clfkit.export.export_run` and :func:`clfkit.predict.predict_folder`.
"""
import os as _os

# albumentations checks PyPI for a newer release on import; that costs a network timeout
# on an offline machine. clfkit never wants it.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
