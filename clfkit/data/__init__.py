"""Data: every source becomes uint8 tensors (N, C, H, W) plus labels (with ``data.storage:
disk``, images that stay in their file and are read as tensors: clfkit.data.disk_storage).

:class:`ImageSet`, :class:`Splits` and :func:`stratified_split` live in
:mod:`clfkit.data.splits` and are re-exported here lazily: importing the package imports no
torch, so the deployment side may use :mod:`clfkit.data.image_files` (PIL and numpy only).
"""

from __future__ import annotations

_SPLITS = ("ImageSet", "Splits", "stratified_split")


def __getattr__(name: str):
    if name in _SPLITS:
        from clfkit.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module 'clfkit.data' has no attribute {name!r}")


__all__ = list(_SPLITS)
