"""``init: PATH``: start any model (clfkit's own or a plugin's) from the weights of a clfkit
checkpoint, or of a run folder's best.pt. Tensors load by name and shape; the receipt
(clfkit.weights_receipt) says what loaded, what stays freshly initialized and why."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn

from clfkit.build import normalization
from clfkit.data import ImageSet
from clfkit.errors import DataError, RecipeError
from clfkit.run.checkpoint import load_checkpoint
from clfkit.run.folder import RunFolder, RunFolderError
from clfkit.weights_receipt import WeightsReceipt, compare, require_match

# the input normalization is not loaded as weights: input_normalization decides it (data.normalize)
_NOT_WEIGHTS = ("mean", "std")


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``init:`` names: the file itself, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        best = RunFolder(path).best
        if not best.is_file():
            raise RunFolderError(f"init: {path} is a folder without best.pt (not a finished clfkit run); "
                                 f"name a run folder or a checkpoint file")
        return best
    if not path.is_file():
        what = "is not a regular file (a device, a pipe or a socket)" if path.exists() else "does not exist"
        raise RunFolderError(f"init: {path} {what}; name a run folder or a clfkit checkpoint file")
    return path


def load_init(model: nn.Module, path: str | Path, min_match: float, num_classes: int) -> WeightsReceipt:
    """Load the weights of the checkpoint (or run folder) ``path`` into ``model`` (an
    ImageClassifier) by name and shape; fewer than ``min_match`` of its tensors matching is an
    error (init_min_match lowers the bar)."""
    file = init_checkpoint(path)
    state = {k: v for k, v in load_checkpoint(file)["model"].items() if k not in _NOT_WEIGHTS}
    own = {k: v for k, v in model.state_dict().items() if k not in _NOT_WEIGHTS}
    receipt = compare(own, state, source=str(file), field_name="init", num_classes=num_classes)
    require_match(receipt, min_match, "init_min_match")
    model.load_state_dict({k: state[k] for k in receipt.loaded}, strict=False)
    return receipt


def init_statistics(path: str | Path) -> Optional[tuple[list[float], list[float]]]:
    """The input mean/std (0..1 scale) the model in the init checkpoint was trained with (its
    ``input`` record), or None when it records none usable."""
    spec = load_checkpoint(init_checkpoint(path)).get("input")
    mean, std = (spec.get("mean"), spec.get("std")) if isinstance(spec, dict) else (None, None)
    numbers = (list, tuple)
    if not (isinstance(mean, numbers) and isinstance(std, numbers) and mean and len(mean) == len(std)):
        return None
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (*mean, *std)) or min(std) <= 0:
        return None
    return [float(v) for v in mean], [float(v) for v in std]


def input_normalization(recipe: Any, train: ImageSet) -> tuple[list[float], list[float], str]:
    """(mean, std, where they come from) for a new run, as ``data.normalize`` asks. ``init``
    takes the init run's statistics (the timm/torchvision fine-tuning convention: its backbone,
    frozen BatchNorm above all, learned on inputs normalized that way); an init that records
    none is an error. ``auto`` stays the train split's with ``init:`` too: on the shipped
    fine-tuning benchmark the init's statistics were no better (README "Fine-tuning")."""
    asked = recipe.data.normalize
    if asked == "init":
        file = init_checkpoint(recipe.init)
        stats = init_statistics(file)
        if stats is None:
            raise RecipeError([("data.normalize", f"`init` takes the init run's mean/std, but {file} records "
                                                  f"none (no input.mean/std in it); use auto (the train split's), "
                                                  f"imagenet, none or {{mean: [...], std: [...]}}")],
                              source="recipe")
        return (*_for_channels(*stats, int(train.images.shape[1]), file), f"init run {file}")
    mean, std = normalization(recipe, train)
    source = asked if isinstance(asked, str) else "recipe"
    # a streamed split's statistics are its head's (clfkit.data.streamed): say so
    auto = f"train split, first {len(train.images)} streamed images" if getattr(train, "streamed", False) else "train split"
    return mean, std, {"auto": auto}.get(source, source)


def _for_channels(mean: list[float], std: list[float], channels: int, file: Path) -> tuple[list[float], list[float]]:
    """The init's statistics for data with ``channels`` channels (RGB ones averaged for
    grayscale data, as for a recipe's own mean/std; a grayscale init's repeated for RGB data)."""
    if channels == 1 and len(mean) == 3:
        return [sum(mean) / 3], [sum(std) / 3]
    if channels == 3 and len(mean) == 1:
        return mean * 3, std * 3
    if len(mean) != channels:
        raise DataError(f"data.normalize: the init run {file} was trained on {len(mean)}-channel inputs, but this "
                        f"data has {channels} channel(s); set data.normalize to imagenet, none or "
                        f"{{mean: [...], std: [...]}} with {channels} values")
    return mean, std
