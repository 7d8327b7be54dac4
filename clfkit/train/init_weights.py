"""``init: PATH``: start any model (clfkit's own or a plugin's) from the weights of a clfkit
checkpoint, or of a run folder's best.pt. Tensors load by name and shape, the classifier head
by class name (docs/fine-tuning.md); the receipt (clfkit.train.weights_receipt) says what loaded,
what stays freshly initialized and why."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from clfkit.train.build import normalization
from clfkit.data import ImageSet
from clfkit.errors import DataError, RecipeError
from clfkit.util.safe_names import check_same_spelling
from clfkit.train.param_groups import head_names
from clfkit.run.checkpoint import load_checkpoint, unfinished_note
from clfkit.run.run_folder import RunFolder, RunFolderError
from clfkit.train.weights_receipt import WeightsReceipt, class_counts, compare, head_owner, require_match

# the input normalization is not loaded as weights: input_normalization decides it (data.normalize)
_NOT_WEIGHTS = ("mean", "std")


def init_checkpoint(path: str | Path) -> Path:
    """The checkpoint file ``init:`` names: the file itself, or a run folder's best.pt."""
    path = Path(path)
    if path.is_dir():
        folder = RunFolder(path)
        if folder.best.is_file():
            return folder.best
        if folder.last.is_file():
            raise RunFolderError(
                f"init: {path} holds last.pt but no best.pt: the run stopped before its first "
                f"evaluated epoch; continue it with `clfkit train --resume {path}`, or name "
                f"{folder.last} itself to start from those weights"
            )
        raise RunFolderError(
            f"init: {path} is a folder without best.pt (not a clfkit run folder); "
            f"name a run folder or a checkpoint file"
        )
    if not path.is_file():
        what = "is not a regular file (a device, a pipe or a socket)" if path.exists() else "does not exist"
        raise RunFolderError(f"init: {path} {what}; name a run folder or a clfkit checkpoint file")
    return path


def load_init(model: nn.Module, path: str | Path, min_match: float, class_names: list[str]) -> WeightsReceipt:
    """Load the weights of the checkpoint (or run folder) ``path`` into ``model`` (an
    ImageClassifier for ``class_names``) by name and shape; fewer than ``min_match`` of its
    tensors matching is an error (init_min_match lowers the bar). The classifier head loads
    whole or not at all, and by class NAME: rows of the classes both runs have are copied to
    their new places, the others start fresh (:func:`_head_by_name`)."""
    file = init_checkpoint(path)
    checkpoint = load_checkpoint(file)
    state = {k: v for k, v in checkpoint["model"].items() if k not in _NOT_WEIGHTS}
    own = {k: v for k, v in model.state_dict().items() if k not in _NOT_WEIGHTS}
    prefix = "net." if hasattr(model, "net") else ""
    head = [prefix + k for k in head_names(getattr(model, "net", model))]
    receipt = compare(own, state, source=str(file), field_name="init", head=head)
    mapped = _head_by_name(receipt, head, own, state, checkpoint.get("class_names"), class_names)
    weights = {**{k: state[k] for k in receipt.loaded}, **mapped}  # after the head's verdict
    require_match(receipt, min_match, "init_min_match")
    note = _unfinished(path, file, checkpoint)
    if note:
        receipt.notes.append(f"{file}: {note}")
    model.load_state_dict(weights, strict=False)
    return receipt


def _head_by_name(
    receipt: WeightsReceipt,
    head: list[str],
    own: dict[str, Tensor],
    state: dict[str, Tensor],
    old: Optional[list[str]],
    new: list[str],
) -> dict[str, Tensor]:
    """The head tensors to load, after matching the init run's classes ``old`` to ``new`` by
    name: the same names in the same order load as they are; other names (or another order)
    copy the rows of the shared classes into a freshly initialized head (counted as adapted);
    no shared class, or no recorded names, leaves the head freshly initialized. The receipt
    says which happened."""
    if not head or any(own[k].ndim == 0 or own[k].shape[0] != len(new) for k in head):
        return {}  # not one row per class (a plugin model's last module is no classifier): as compare() said
    if not (set(head) <= set(receipt.loaded) or class_counts({k: own[k] for k in head}, state)):
        return {}  # the head did not fit at all: compare() said why
    if old is not None and any(state[k].shape[0] != len(old) for k in head):
        old = None  # a hand-edited checkpoint: its names do not say which row is which
    check_same_spelling(old or [], new, "the init run's classes", "this data's classes")
    receipt.loaded = [k for k in receipt.loaded if k not in head]
    receipt.reinitialized = [(k, why) for k, why in receipt.reinitialized if k not in head]
    shared = [c for c in new if old and c in old]
    if old == new:
        receipt.loaded += head
        receipt.head = None
        return {k: state[k] for k in head}
    counts = f"classifier {head_owner(head)} {len(old) if old else '?'} -> {len(new)} classes"
    if not shared:
        why = (
            "the init checkpoint records no class names"
            if not old
            else f"no class in common: the init run's {_few(old)}, this data's {_few(new)}"
        )
        receipt.head = f"{counts}, re-initialized: {why}"
        receipt.reinitialized += [(k, receipt.head) for k in head]
        return {}
    fresh, unused = [c for c in new if c not in shared], [c for c in old if c not in new]
    parts = [f"{len(shared)} shared"] if fresh or unused else ["the same classes in another order"]
    if fresh:
        parts.append(f"{len(fresh)} new freshly initialized ({_few(fresh)})")
    if unused:
        parts.append(f"{len(unused)} of the init run's dropped ({_few(unused)})")
    receipt.head = f"{counts}, rows mapped by class name: " + ", ".join(parts)
    receipt.adapted += [(k, receipt.head) for k in head]
    rows = [(new.index(c), old.index(c)) for c in shared]
    out = {}
    for k in head:
        tensor = own[k].clone()
        for to, frm in rows:
            tensor[to] = state[k][frm]
        out[k] = tensor
    return out


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _unfinished(given: str | Path, file: Path, checkpoint: dict) -> str:
    """export's note for a checkpoint of an unfinished run ("" when finished, or not in a run folder)."""
    run_dir = Path(given) if Path(given).is_dir() else file.parent
    if not RunFolder(run_dir).recipe.is_file():
        return ""  # a checkpoint file copied out of its run: nothing says whether that run finished
    return unfinished_note(run_dir, checkpoint)


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
            raise RecipeError(
                [
                    (
                        "data.normalize",
                        f"`init` takes the init run's mean/std, but {file} records "
                        f"none (no input.mean/std in it); use auto (the train split's), "
                        f"imagenet, none or {{mean: [...], std: [...]}}",
                    )
                ],
                source="recipe",
            )
        return (*_for_channels(*stats, int(train.images.shape[1]), file), f"init run {file}")
    mean, std = normalization(recipe, train)
    source = asked if isinstance(asked, str) else "recipe"
    # a streamed split's statistics are its head's (clfkit.data.streamed): say so
    auto = (
        f"train split, first {len(train.images)} streamed images"
        if getattr(train, "streamed", False)
        else "train split"
    )
    return mean, std, {"auto": auto}.get(source, source)


def _for_channels(
    mean: list[float], std: list[float], channels: int, file: Path
) -> tuple[list[float], list[float]]:
    """The init's statistics for data with ``channels`` channels (RGB ones averaged for
    grayscale data, as for a recipe's own mean/std; a grayscale init's repeated for RGB data)."""
    if channels == 1 and len(mean) == 3:
        return [sum(mean) / 3], [sum(std) / 3]
    if channels == 3 and len(mean) == 1:
        return mean * 3, std * 3
    if len(mean) != channels:
        raise DataError(
            f"data.normalize: the init run {file} was trained on {len(mean)}-channel inputs, but this "
            f"data has {channels} channel(s); set data.normalize to imagenet, none or "
            f"{{mean: [...], std: [...]}} with {channels} values"
        )
    return mean, std
