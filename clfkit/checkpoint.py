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


# --------------------------------------------------------------------------- a run's checkpoints
def run_checkpoint(run_dir: str | Path, name: str | None, command: str) -> tuple[Path, dict[str, Any]]:
    """Checkpoint ``name`` of the run folder ``run_dir`` (default: best.pt, or last.pt of an
    unfinished run), loaded and checked to belong to that run: ``clfkit export``/``eval`` name
    their outputs after the run, so a checkpoint from elsewhere must never pass as it."""
    from clfkit.runs import RunFolderError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise RunFolderError(f"run folder {run_dir} {what}")
    path = run_dir / _checkpoint_name(run_dir, name, command)
    if path.resolve().parent != run_dir.resolve():
        raise RunFolderError(f"{path} is a link to {path.resolve()}, outside the run folder {run_dir}; "
                             f"run `clfkit {command} {path.resolve().parent}` for the run it belongs to")
    state = load_checkpoint(path)
    _check_belongs(run_dir, path, state, command)
    return path, state


def _checkpoint_name(run_dir: Path, name: str | None, command: str) -> str:
    """A checkpoint file name in ``run_dir``; a path leading elsewhere is refused, a typo lists
    the checkpoints there are."""
    from clfkit.runs import RunFolderError

    found = sorted(p.name for p in run_dir.glob("*.pt") if p.is_file())
    if not found:
        raise RunFolderError(f"{run_dir} is not a run folder: it holds no checkpoint (*.pt). Give a folder "
                             f"written by `clfkit train`, e.g. runs/<name>")
    if name is None:  # an unfinished run has only last.pt
        name = "best.pt" if "best.pt" in found or "last.pt" not in found else "last.pt"
    if Path(name).name != name or name in ("", ".", ".."):
        given = Path(name)
        inside = [p for p in (given, run_dir / given) if p.resolve().parent == run_dir.resolve()]
        if not inside:
            raise RunFolderError(f"--checkpoint {name} is not in the run folder {run_dir}; a checkpoint is "
                                 f"named by its file name there ({', '.join(found)}). To use that checkpoint, "
                                 f"run `clfkit {command} {given.resolve().parent}` instead")
        name = inside[0].name
    if name not in found:
        raise RunFolderError(f"--checkpoint {name}: no such checkpoint in {run_dir}; it has {', '.join(found)}")
    return name


def _check_belongs(run_dir: Path, path: Path, state: dict[str, Any], command: str) -> None:
    """The checkpoint's recorded recipe and classes must be the run's own (recipe.yaml, summary.json)."""
    import json

    import yaml

    from clfkit.runs import RunFolderError

    recipe_file = run_dir / "recipe.yaml"
    try:
        run_recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{run_dir} is not a run folder: it has no recipe.yaml (a folder written by "
                             f"`clfkit train` has one)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise RunFolderError(f"{recipe_file} cannot be read ({type(e).__name__}); the run folder is damaged") from None
    where = _first_difference(run_recipe, state.get("recipe"))
    if where is not None and _normalized(run_recipe) != _normalized(state.get("recipe")):
        raise RunFolderError(f"{path} was not trained by this run: its recipe differs from {recipe_file} at "
                             f"{where or '<root>'}. It was copied from another run; run `clfkit {command}` on "
                             f"the run folder it came from")
    summary = run_dir / "summary.json"
    try:
        names = json.loads(summary.read_text(encoding="utf-8")).get("class_names") if summary.is_file() else None
    except (OSError, ValueError, AttributeError):
        names = None  # an unreadable summary says nothing about the classes; the recipe matched
    if names is not None and names != state.get("class_names"):
        raise RunFolderError(f"{path} was not trained by this run: its classes {state.get('class_names')} differ "
                             f"from the run's {names} (summary.json)")


def _first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Dotted path of the first place two JSON-like values differ; None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{where}.{k}".lstrip(".")
            sub = _first_difference(a[k], b[k], f"{where}.{k}")
            if sub is not None:
                return sub
        return None
    return None if a == b else where.lstrip(".")


def _normalized(data: Any) -> Any:
    """A recipe as clfkit validates it today (older runs may lack fields with defaults)."""
    from clfkit.errors import ClfkitError
    from clfkit.recipe import validate_recipe

    try:
        return validate_recipe(data).to_dict()
    except ClfkitError:
        return data
