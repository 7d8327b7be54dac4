"""Checkpoints: plain dicts of tensors and JSON-like values, saved atomically and loaded only
with ``torch.load(weights_only=True)``, so opening a downloaded checkpoint runs no code.

A checkpoint holds what is needed to rebuild and use the model without the run folder: the
weights, the resolved recipe, the class names and the input spec (size, channels, mean/std,
resize), plus the training state in ``last.pt``.
"""

from __future__ import annotations

import io as _io
import warnings
from pathlib import Path
from typing import Any

import torch

from clfkit import __version__
from clfkit.errors import ModelFileError
from clfkit.util.atomic import write_bytes
from clfkit.run.run_folder import BEST_PT, LAST_PT, RunFolder, RunFolderError

FORMAT = "clfkit.checkpoint"
FORMAT_VERSION = 1


class Checkpoint(dict):
    """A loaded checkpoint: its dict, plus ``path``, the file it came from (for messages).
    Saving one writes a plain dict (save_checkpoint copies it)."""

    path: Path | None = None


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
        with warnings.catch_warnings():  # torch warns of pickle protocols in files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ModelFileError(
            f"{path} is not a clfkit checkpoint: {_unloadable(e)}; give a run folder or a "
            f"checkpoint (best.pt, last.pt) written by `clfkit train`"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(
            f"{path} is a torch file but not a clfkit checkpoint (no '{FORMAT}' marker); give a "
            f"run folder or a checkpoint (best.pt, last.pt) written by `clfkit train`. Plain "
            f"weights (a state dict, a .safetensors file) go to a timm model's `weights:` "
            f"(docs/fine-tuning.md)"
        )
    if not isinstance(state.get("format_version", 0), int) or state.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer clfkit ({state.get('clfkit_version')}); upgrade clfkit to read it"
        )
    problem = _field_problem(state)
    if problem:
        raise ModelFileError(
            f"{path} is a damaged or hand-edited clfkit checkpoint: {problem}; use another "
            f"checkpoint of the run (best.pt or last.pt) or train again"
        )
    state = Checkpoint(state)
    state.path = path
    return state


def _unloadable(e: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in clfkit's words: torch's own message
    advises loading with weights_only=False, which runs whatever code the file holds."""
    text = str(e)
    if "Weights only load failed" in text:
        return (
            "it holds Python objects other than tensors and plain values (a pickle, or a whole model "
            "saved with torch.save(model)); clfkit never unpickles those, as opening them could run code"
        )
    if isinstance(e, EOFError) or not text:
        return f"the file is empty or cut short ({type(e).__name__})"
    return f"not a torch file ({type(e).__name__}: {text.splitlines()[0][:160]})"


def _field_problem(state: dict[str, Any]) -> str | None:
    """Why the fields that a checkpoint holds cannot be used (None when they can). Only the
    fields present are checked: a partial checkpoint is refused where a field is needed."""
    if "model" in state and not isinstance(state["model"], dict):  # its entries: load_weights
        return "'model' is not a dict of weights"
    if "recipe" in state and not isinstance(state["recipe"], dict):
        return "'recipe' is not a mapping"
    names = state.get("class_names")
    if "class_names" in state and not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) for n in names)
        and len(set(names)) == len(names)
    ):
        return f"'class_names' is {names!r}, not a list of distinct names"
    if "input" in state:
        return _input_problem(state["input"])
    return None


def _input_problem(spec: Any) -> str | None:
    def ints(v, n):
        return (
            isinstance(v, (list, tuple))
            and len(v) == n
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v)
        )

    if not isinstance(spec, dict):
        return "'input' is not a mapping"
    channels = spec.get("channels")
    if channels not in (1, 3):
        return f"input.channels is {channels!r}, not 1 or 3"
    if not ints(spec.get("image_size"), 2):
        return f"input.image_size is {spec.get('image_size')!r}, not [height, width]"
    for key in ("mean", "std"):
        v = spec.get(key)
        if not (
            isinstance(v, (list, tuple))
            and len(v) == channels
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            return f"input.{key} is {v!r}, not {channels} number(s)"
    if any(x == 0 for x in spec["std"]):
        return "input.std holds a 0"
    return None


def model_from_checkpoint(state: dict[str, Any], path: str | Path | None = None):
    """Rebuild the ImageClassifier a checkpoint was trained as and load its weights.
    ``path`` (the file ``state`` came from) names the file in errors."""
    from clfkit.train.build import build_model
    from clfkit.recipe import validate_recipe

    path = path or getattr(state, "path", None)
    name = str(path) if path else "the checkpoint"
    require_model_fields(state, name)
    recipe = validate_recipe(state["recipe"], source=f"{name} recipe")
    spec = state["input"]
    model = build_model(
        recipe,
        len(state["class_names"]),
        spec["channels"],
        tuple(spec["image_size"]),
        spec["mean"],
        spec["std"],
    )
    load_weights(model, state["model"], name)
    return model.eval()


# --------------------------------------------------------------------------- a run's checkpoints
def run_checkpoint(run_dir: str | Path, name: str | None, command: str) -> tuple[Path, dict[str, Any]]:
    """Checkpoint ``name`` of the run folder ``run_dir`` (default: best.pt, or last.pt of an
    unfinished run), loaded and checked to belong to that run: ``clfkit export``/``eval`` name
    their outputs after the run, so a checkpoint from elsewhere must never pass as it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise RunFolderError(f"run folder {run_dir} {what}")
    path = run_dir / _checkpoint_name(run_dir, name, command)
    if path.resolve().parent != run_dir.resolve():
        raise RunFolderError(
            f"{path} is a link to {path.resolve()}, outside the run folder {run_dir}; "
            f"run `clfkit {command} {path.resolve().parent}` for the run it belongs to"
        )
    state = load_checkpoint(path)
    _check_belongs(run_dir, path, state, command)
    return path, state


def unfinished_note(run_dir: str | Path, state: dict[str, Any]) -> str:
    """ "" for a finished run; else what `export` and `eval` say of its checkpoint: a stopped
    run's best epoch so far, which the epochs still planned may well beat."""
    if RunFolder(run_dir).finished:
        return ""
    planned = state.get("recipe", {}).get("train", {}).get("epochs", "?")
    return (
        f"the run is not finished (no summary.json; {planned} epochs planned, later ones may do better); "
        f"`clfkit train --resume {run_dir}` continues a stopped run"
    )


def _checkpoint_name(run_dir: Path, name: str | None, command: str) -> str:
    """A checkpoint file name in ``run_dir``; a path leading elsewhere is refused, a typo lists
    the checkpoints there are."""
    found = sorted(p.name for p in run_dir.glob("*.pt") if p.is_file())
    if not found:
        raise RunFolderError(
            f"{run_dir} is not a run folder: it holds no checkpoint (*.pt). Give a folder "
            f"written by `clfkit train`, e.g. runs/<name>"
        )
    if name is None:  # an unfinished run may have only last.pt; a finished one always has best.pt
        if BEST_PT not in found and LAST_PT in found and RunFolder(run_dir).finished:
            raise RunFolderError(
                f"{run_dir} is a finished run without its best.pt (removed or moved?); "
                f"its summary and reports are best.pt's, so clfkit {command} does not "
                f"silently use last.pt: restore best.pt, or give --checkpoint last.pt for "
                f"the last epoch's weights"
            )
        name = BEST_PT if BEST_PT in found or LAST_PT not in found else LAST_PT
    if Path(name).name != name or name in ("", ".", ".."):
        given = Path(name)
        inside = [p for p in (given, run_dir / given) if p.resolve().parent == run_dir.resolve()]
        if not inside:
            # the path is read from the working folder or from the run folder; suggest the one that exists
            elsewhere = next((p for p in (given, run_dir / given) if p.is_file()), None)
            hint = (
                f". To use that checkpoint, run `clfkit {command} {elsewhere.resolve().parent}` instead"
                if elsewhere
                else f"; no such file exists either (for another run's checkpoint, "
                f"run `clfkit {command} THAT_RUN_DIR`)"
            )
            raise RunFolderError(
                f"--checkpoint {name} is not in the run folder {run_dir}; a checkpoint is "
                f"named by its file name there ({', '.join(found)}){hint}"
            )
        name = inside[0].name
    if name not in found:
        raise RunFolderError(
            f"--checkpoint {name}: no such checkpoint in {run_dir}; it has {', '.join(found)}"
        )
    return name


def _check_belongs(run_dir: Path, path: Path, state: dict[str, Any], command: str) -> None:
    """The checkpoint's recorded recipe and classes must be the run's own (recipe.yaml, summary.json)."""
    import json

    import yaml

    recipe_file = RunFolder(run_dir).recipe
    try:
        run_recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(
            f"{run_dir} is not a run folder: it has no recipe.yaml (a folder written by "
            f"`clfkit train` has one)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunFolderError(
            f"{recipe_file} cannot be read ({type(e).__name__}); the run folder is damaged"
        ) from None
    differences = recipe_differences(run_recipe, state.get("recipe"))
    if differences and _normalized(run_recipe) != _normalized(state.get("recipe")):
        where = differences[0][0]
        raise RunFolderError(
            f"{path} was not trained by this run: its recipe differs from {recipe_file} at "
            f"{where or '<root>'}. Either {recipe_file.name} was edited (restore it: it must "
            f"say what the run trained) or the checkpoint was copied from another run (run "
            f"`clfkit {command}` on the run folder it came from)"
        )
    summary = RunFolder(run_dir).summary
    try:
        names = (
            json.loads(summary.read_text(encoding="utf-8")).get("class_names") if summary.is_file() else None
        )
    except (OSError, ValueError, AttributeError):
        names = None  # an unreadable summary says nothing about the classes; the recipe matched
    if names is not None and names != state.get("class_names"):
        raise RunFolderError(
            f"{path} was not trained by this run: its classes {state.get('class_names')} differ "
            f"from the run's {names} (summary.json)"
        )


def recipe_differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, old, new) of every value that differs between two recipe mappings, in
    the order of their keys ("" for values that are not both mappings)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for key in dict.fromkeys([*old, *new])
            for d in recipe_differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        ]
    return [] if old == new else [(path, old, new)]


def _normalized(data: Any) -> Any:
    """A recipe as clfkit validates it today (older runs may lack fields with defaults)."""
    from clfkit.errors import ClfkitError
    from clfkit.recipe import validate_recipe

    try:
        return validate_recipe(data).to_dict()
    except ClfkitError:
        return data


MODEL_FIELDS = ("model", "recipe", "class_names", "input")  # what rebuilding the model needs


def require_model_fields(state: dict[str, Any], name: str) -> None:
    missing = [k for k in MODEL_FIELDS if k not in state]
    if missing:
        raise ModelFileError(
            f"{name} lacks {', '.join(map(repr, missing))}: it cannot rebuild the model "
            f"(a damaged or hand-edited checkpoint, or not one saved by the trainer)"
        )


def load_weights(model: torch.nn.Module, weights: dict[str, Any], name: str) -> None:
    """``model.load_state_dict(weights)``; weights that do not fit the model the checkpoint's
    own recipe builds (a hand-edited or damaged file) are a ModelFileError naming it."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # missing/unexpected keys, shape mismatches
        first = str(e).strip().splitlines()
        raise ModelFileError(
            f"{name}: its weights do not fit the model its recipe describes "
            f"({' '.join(l.strip() for l in first[:3])[:400]}); a damaged or "
            f"hand-edited checkpoint"
        ) from None
