"""Checkpoints: plain dicts of tensors and JSON-like values, saved atomically and loaded only
with ``torch.load(weights_only=True)``, so opening a downloaded checkpoint runs no code.

A checkpoint holds what is needed to rebuild and use the model without the run folder: the
weights, the resolved recipe, the class names and the input spec (size, channels, mean/std,
resize), plus the training state in ``last.pt``.
"""
from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Any

import torch

from clfkit import __version__
from clfkit.errors import ModelFileError
from clfkit.io import write_bytes

FORMAT = "clfkit.checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically write ``state`` (with format markers) to ``path``."""
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "clfkit_version": __version__, **state}
    buf = _io.BytesIO()
    torch.save(state, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a clfkit checkpoint safely; a file that is not one gets a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ModelFileError(f"{path} is not a loadable clfkit checkpoint ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a torch file but not a clfkit checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer clfkit ({state.get('clfkit_version')}); "
                             f"upgrade clfkit to read it")
    return state


def model_from_checkpoint(state: dict[str, Any]):
    """Rebuild the ImageClassifier a checkpoint was trained as and load its weights."""
    from clfkit.build import build_model
    from clfkit.recipe import validate_recipe

    recipe = validate_recipe(state["recipe"], source="checkpoint recipe")
    spec = state["input"]
    model = build_model(recipe, len(state["class_names"]), spec["channels"], tuple(spec["image_size"]),
                        spec["mean"], spec["std"])
    model.load_state_dict(state["model"])
    return model.eval()
