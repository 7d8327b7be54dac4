"""The run's data as export reads it (``--int8`` calibration, ``--calibrate``): read as the run
read it, or from ``--data-root``, every failure one ExportError saying what the option needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from clfkit.errors import ExportError


def read_run_splits(state: dict, data_root: Optional[str | Path], option: str, needs: str) -> Any:
    """The run's splits for ``option`` (``--int8``, ``--calibrate``), which ``needs`` them (e.g.
    "calibrates on the run's training images"); refused when unreadable or of other classes."""
    from clfkit.train.build import build_data
    from clfkit.errors import DataError
    from clfkit.run.data_record import recipe_on_data, where

    try:
        recipe = recipe_on_data(state["recipe"], data_root, "the checkpoint's recipe", f"export {option}")
    except DataError as e:
        raise ExportError(f"{e}; nothing was written") from None
    try:
        splits = build_data(recipe)
    except Exception as e:  # noqa: BLE001 - unreadable data: say what the option needs
        raise ExportError(
            f"{option} {needs}, which cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); give the data's place with --data-root; nothing "
            f"was written"
        ) from None
    if splits.class_names != state["class_names"]:
        raise ExportError(
            f"{option}: the data at {where(recipe.data.source)} has classes {splits.class_names}, but "
            f"the run was trained on {state['class_names']}; give the run's data with --data-root; "
            f"nothing was written"
        )
    return splits
