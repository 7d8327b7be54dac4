"""Recipes: YAML files validated by pydantic, with every component checked against its own
signature when the recipe is loaded, so a typo fails before any data is read.

A component is written as a name or ``{name: ..., <args>}``::

    model: {name: resnet, depth: 18, stem: imagenet, width: 0.5}
    optim: {name: sgd, lr: 0.1, momentum: 0.9}

``load_recipe(path, overrides)`` returns a :class:`Recipe` whose component specs have every
default filled in: the *resolved* recipe, which the run folder and checkpoints record.
The models themselves are in :mod:`clfkit.recipe.models` (and importable from here).
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import pydantic
import yaml
from pydantic import BaseModel

from clfkit import registry
from clfkit.errors import RecipeError
from clfkit.recipe.models import (  # noqa: F401 - the models are part of clfkit.recipe's API
    COMPONENT_FIELDS,
    EMA,
    IMAGENET,
    SEED_MAX,
    Component,
    DataConfig,
    EarlyStopping,
    Normalize,
    Recipe,
    Strict,
    TrainConfig,
    _components_in,
    seed_range_problem,
)
from clfkit.util import yaml_text as yamltext
from clfkit.util.did_you_mean import did_you_mean


# --------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict:
    """Read a recipe or sweep file with clfkit's YAML reader (clfkit/util/yaml_text.py: no code
    runs, YAML 1.2 numbers, duplicate keys and alias bombs refused); errors name the line."""
    path = Path(path)
    try:
        data = yamltext.load(_recipe_text(path))
    except yamltext.YAMLProblem as e:
        raise RecipeError([(e.path, str(e))], source=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise RecipeError([("", f"YAML syntax error at {where}{problem}")], source=str(path)) from None
    except UnicodeDecodeError as e:
        raise RecipeError([("", f"not a UTF-8 text file ({e})")], source=str(path)) from None
    if not isinstance(data, dict):
        got = (
            "nothing (the file is empty, or holds only comments or null)"
            if data is None
            else type(data).__name__
        )
        raise RecipeError(
            [("", f"a recipe is a YAML mapping of fields (name:, data:, model:, ...), got {got}")],
            source=str(path),
        )
    return data


MAX_RECIPE_BYTES = 10_000_000  # recipes are a few KB; this bounds a read of /dev/zero or a huge file


def _recipe_text(path: Path) -> str:
    """The text of a recipe file, read once: a plain file, or a pipe such as bash's
    ``<(sed ... r.yaml)``; a folder, or more than MAX_RECIPE_BYTES, is refused."""
    if path.is_dir():
        raise RecipeError([("", f"{path} is a folder, not a recipe file")], source=str(path))
    if not path.exists():
        raise RecipeError([("", f"file {path} does not exist")], source=str(path))
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError([("", f"cannot read {path} ({e.strerror or e})")], source=str(path)) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            [
                (
                    "",
                    f"{path} is larger than {MAX_RECIPE_BYTES:,} bytes: not a recipe "
                    f"(a recipe is a small YAML text file)",
                )
            ],
            source=str(path),
        )
    return raw.decode("utf-8")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.01"`` -> (["optim", "lr"], 0.01). The value is read as in a recipe file
    (clfkit.util.yaml_text.parse_value, the same for --grid values and sweep files)."""
    if "=" not in text:
        raise RecipeError(
            [("", f"--set {text!r}: expected dotted.path=value, e.g. optim.lr=0.01")], source="--set"
        )
    key, _, raw = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError([(key, f"--set {text!r}: not a dotted path like train.epochs")], source="--set")
    try:
        value = yamltext.parse_value(raw)
    except yamltext.YAMLProblem as e:
        raise RecipeError(
            [(f"{key}.{e.path}" if e.path else key, f"--set {key}=...: {e}")], source="--set"
        ) from None
    return key.split("."), value


def parse_overrides(texts: list[str] | tuple[str, ...]) -> list[tuple[list[str], Any]]:
    """Every ``--set`` parsed; a path set twice, or a path set after one inside it (``model.depth=34``
    then ``model=cnn`` drops the depth), is refused: one of the two would be lost silently."""
    parsed = [parse_override(text) for text in texts]
    for i, (keys, _) in enumerate(parsed):
        earlier = next((k for k, _ in parsed[:i] if k[: len(keys)] == keys), None)
        if earlier is not None:
            what = "is set twice" if earlier == keys else f"replaces the earlier --set {'.'.join(earlier)}"
            raise RecipeError(
                [(".".join(keys), f"--set {'.'.join(keys)} {what}; keep one (the later would silently win)")],
                source="--set",
            )
    return parsed


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set ``data[path] = value`` creating mappings on the way; list items by index. A
    component written as a name (``model: resnet``, an augmentation ``HorizontalFlip``)
    becomes ``{name: ...}`` when one of its arguments is set."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        here = path[: i + 1]
        key = _index(node, part, here) if isinstance(node, list) else part
        child = node[key] if isinstance(node, list) else node.get(part)
        if isinstance(child, str) and not path[i + 1].isdigit():  # `model: resnet` + model.depth=34
            child = {"name": child}
        if child is None and isinstance(node, dict):  # `--set optim.lr=...` with no optim: its default
            child = _default_component(".".join(here)) or {}
        if not isinstance(child, (dict, list)):
            raise RecipeError(
                [(".".join(here), f"is {child!r}, not a mapping or a list; cannot set {'.'.join(path)}")],
                source="--set",
            )
        node[key] = child
        node = child
    if isinstance(node, list):
        node[_index(node, path[-1], path)] = value
    else:
        node[path[-1]] = value


def _default_component(path: str) -> Optional[dict]:
    """The default spec of a component field a recipe leaves out (``optim`` -> {name: sgd})."""
    if path not in {p for _, p, many in COMPONENT_FIELDS if not many}:
        return None
    holder = DataConfig if path == "data.source" else Recipe
    field = holder.model_fields.get(path.rsplit(".", 1)[-1])
    return dict(field.default_factory()) if field is not None and field.default_factory else None


def _index(node: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(
            [(".".join(path), f"list index {part!r} out of range (the list has {len(node)} item(s))")],
            source="--set",
        )
    return int(part)


def validate_recipe(data: dict, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping: structure (pydantic), then every component's arguments."""
    too_big = [
        (path, f"{value} does not fit in 64 bits (torch and numpy need it to)")
        for path, value in _ints_in(data)
        if not -(2**63) <= value < 2**63
    ]
    if too_big:
        raise RecipeError(too_big, source=source)
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as e:
        # report the components' problems too, so one run shows every mistake
        problems = _pydantic_problems(e, data)
        for kind, path, spec in _components_in(data):
            if not (isinstance(spec, str) or (isinstance(spec, dict) and isinstance(spec.get("name"), str))):
                continue  # a misshapen spec: pydantic has reported it already
            problems += [p for p in registry.check_spec(kind, spec, path) if p not in problems]
        raise RecipeError(problems, source=source) from None
    problems = []
    for kind, path, spec in recipe.components():
        problems += registry.check_spec(kind, spec, path)
    if problems:
        raise RecipeError(problems, source=source)
    # fill every default in, so the saved recipe says exactly what ran
    resolved = recipe.to_dict()
    for kind, path, spec in recipe.components():
        apply_override(resolved, path.split("."), registry.resolve_spec(kind, spec))
    final = Recipe.model_validate(resolved)
    # rules between components (a component's optional ``check_recipe(recipe, path)``), e.g.
    # label smoothing asked for twice, once in the loss and once as a regularizer
    for kind, path, spec in final.components():
        check = getattr(registry.get(kind, registry.split_spec(spec)[0]).obj, "check_recipe", None)
        if check is not None:
            problems += check(final, path)
    problems += _bools_read_as_numbers(data, final.to_dict())
    if final.data.normalize == "init" and not final.init:
        problems.append(
            (
                "data.normalize",
                "`init` takes the mean/std of the init: run, but this recipe has no "
                "init:; name a run folder in init:, or use auto, imagenet, none or "
                "{mean: [...], std: [...]}",
            )
        )
    if problems:
        raise RecipeError(problems, source=source)
    return final


def _leaves(node: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(keys, value) of every value in a recipe mapping that is neither a mapping nor a list."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else None
    if items is None:
        return [(path, node)]
    return [leaf for key, child in items for leaf in _leaves(child, (*path, key))]


def _ints_in(node: Any) -> list[tuple[str, int]]:
    """(dotted path, value) of every integer in a raw recipe mapping."""
    return [
        (".".join(map(str, keys)), value)
        for keys, value in _leaves(node)
        if isinstance(value, int) and not isinstance(value, bool)
    ]


def _bools_read_as_numbers(data: dict, resolved: dict) -> list[tuple[str, str]]:
    """pydantic reads true/false as 1/0 where a number is expected (``batch_size: true`` would
    train with batch 1, ``lr: true`` at 1.0): a yes/no written where the resolved recipe holds a
    number is a mistake, reported at its path. Fields that take true as a shorthand (``ema:
    true``) resolve to a mapping, so they pass."""
    problems = []
    for keys, value in _leaves(data):
        if not isinstance(value, bool):
            continue
        got: Any = resolved
        for key in keys:
            ok = (
                isinstance(got, dict)
                and key in got
                or isinstance(got, list)
                and isinstance(key, int)
                and key < len(got)
            )
            got = got[key] if ok else None
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            problems.append(
                (
                    ".".join(map(str, keys)),
                    f"{str(value).lower()} is a yes/no value, but this "
                    f"field takes a number (it would be read as {got!r}); "
                    f"write the number",
                )
            )
    return problems


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (``dotted.path=value``) and validate a recipe file. The model-size cap
    needs the model built: :func:`clfkit.train.build.check_model_size` checks it, still before any
    data is read."""
    data = read_yaml(path)
    if "sweep" in data:
        raise RecipeError(
            [
                (
                    "sweep",
                    "this is a sweep file: run it with `clfkit sweep "
                    f"{path}` (or remove the sweep: block to train one recipe)",
                )
            ],
            source=str(path),
        )
    for keys, value in parse_overrides(overrides):
        apply_override(data, keys, value)
    return validate_recipe(data, source=str(path))


def _field_loc(loc: tuple) -> tuple[tuple, Optional[type[BaseModel]]]:
    """An error location as the recipe spells it, and the model class holding its last field
    (for did-you-mean). pydantic names the union member it tried after a union field
    (``data.image_size.constrained-int``, ``data.normalize.Normalize.std``); those tags are
    dropped, found from the fields' types rather than from a list of tag spellings."""
    out: list = []
    model: Any = Recipe
    holder = None
    members: tuple = ()  # set right after a union field: the next part is a member's tag
    for part in loc:
        if members:
            model = next((m for m in members if getattr(m, "__name__", None) == part), None)
            members = ()
            continue
        out.append(part)
        holder = model
        if isinstance(part, int):  # a list item: the items' model, if any, stays current
            continue
        field = getattr(model, "model_fields", {}).get(part)
        ann = field.annotation if field is not None else None
        args = tuple(a for a in typing.get_args(ann) if a is not type(None))
        if typing.get_origin(ann) in (Union, types.UnionType) and len(args) > 1:
            members, model = args, None
        else:
            model = next((a for a in (*args, ann) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return tuple(out), holder


def _pydantic_problems(e: pydantic.ValidationError, data: dict) -> list[tuple[str, str]]:
    problems = []
    for err in e.errors():
        loc, model = _field_loc(err["loc"])
        path = ".".join(str(x) for x in loc)
        if err["type"] == "extra_forbidden":
            valid = list(model.model_fields) if model else []
            hint = did_you_mean(str(loc[-1]), valid, n=1)
            msg = f"unknown field{hint} Valid fields here: {', '.join(valid)}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "value_error":  # our own validators' messages already show the input
            msg = str(err["ctx"]["error"])
        else:
            msg = err["msg"]
            if "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        if (path, msg) not in problems:
            problems.append((path, msg))
    return problems
