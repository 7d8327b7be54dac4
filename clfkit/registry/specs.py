"""Component specs: ``name`` or ``{name: ..., <args>}``, checked against the component's own
signature (names, types, ranges), with every problem reported at its dotted recipe path.

The functions take ``lookup(kind, name) -> Entry`` (a registry's ``get``) rather than a
registry, so that the spec rules do not depend on where the components are kept."""

from __future__ import annotations

import math
from typing import Any, Callable

import pydantic
from pydantic import BaseModel

from clfkit.errors import RecipeError, RegistryError
from clfkit.registry.entries import Entry, KINDS
from clfkit.util.did_you_mean import did_you_mean

Lookup = Callable[[str, str], Entry]


def split_spec(spec: Any) -> tuple[str, dict]:
    """``"name"`` or ``{"name": ..., **args}`` -> (name, args)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, BaseModel):
        spec = spec.model_dump()
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        args = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"], args
    raise RegistryError(f"a component is written as a name or {{name: ..., <args>}}, got {spec!r}")


def validate_args(entry: Entry, args: dict, lookup: Lookup, path: str = "") -> dict:
    """Validate user ``args`` against ``entry``'s signature; raise RecipeError with paths."""
    problems = check_args(entry, args, path, lookup)
    if problems:
        raise RecipeError(problems, source=path or entry.name)
    return validated(entry, args)


def validated(entry: Entry, args: dict) -> dict:
    """``args`` as the component's validator or argument model returns them (defaults filled)."""
    if entry.validator is not None:
        return entry.validator(dict(args))
    model = entry.args_model.model_validate(args)
    out = {name: getattr(model, name) for name in type(model).model_fields}
    out.update(model.model_extra or {})
    return out


def check_args(entry: Entry, args: dict, path: str, lookup: Lookup) -> list[tuple[str, str]]:
    """All problems with ``args`` for ``entry``, as (dotted path, message) pairs."""
    kind = KINDS[entry.kind]
    problems = [
        (f"{path}.{a}", "is set by clfkit (from the data or the trainer), not in the recipe; remove it")
        for a in args
        if a in kind.supplied
    ]
    args = {k: v for k, v in args.items() if k not in kind.supplied}
    if entry.validator is not None:
        try:
            entry.validator(dict(args))
        except Exception as e:
            problems.append((path, f"{entry.kind} {entry.name!r}: {e}"))
        return problems
    try:
        entry.args_model.model_validate(args)
    except pydantic.ValidationError as e:
        problems += [_arg_problem(entry, err, path) for err in e.errors()]
    # references to other components (a model's norm / activation) are checked recursively
    for arg, ref_kind in kind.refs.items():
        if arg in args and args[arg] is not None and entry.accepts(arg):
            problems += check_spec(ref_kind, args[arg], f"{path}.{arg}", lookup)
    return problems


def _arg_problem(entry: Entry, err: Any, path: str) -> tuple[str, str]:
    """One pydantic error about a component's arguments, as (dotted path, message)."""
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden" and len(err["loc"]) > 1:
        msg = f"unknown field {err['loc'][-1]!r} here"
    elif err["type"] == "extra_forbidden":
        valid = [p.name for p in entry.user_params()]
        hint = did_you_mean(str(err["loc"][0]), valid, n=1)
        msg = (
            f"{entry.kind} {entry.name!r} has no argument {err['loc'][0]!r}{hint} "
            f"Valid: {', '.join(valid) or '(none)'}"
        )
    elif err["type"] == "missing":
        msg = f"required argument of {entry.kind} {entry.name!r} is missing"
    else:
        msg = f"{err['msg']} (got {err.get('input')!r})"
    return f"{path}.{loc}", msg


def check_spec(kind: str, spec: Any, path: str, lookup: Lookup) -> list[tuple[str, str]]:
    """Problems with a component spec (unknown name, bad args), with dotted paths."""
    try:
        name, args = split_spec(spec)
        entry = lookup(kind, name)
    except RegistryError as e:
        return [(path if isinstance(spec, str) else f"{path}.name", str(e))]
    return check_args(entry, args, path, lookup)


def resolve_spec(kind: str, spec: Any, lookup: Lookup) -> dict:
    """``spec`` with defaults filled in: what the resolved recipe records."""
    name, args = split_spec(spec)
    entry = lookup(kind, name)
    args = {k: v for k, v in args.items() if k not in KINDS[kind].supplied}
    full = validated(entry, args)
    for arg, ref_kind in KINDS[kind].refs.items():
        if full.get(arg) is not None and entry.accepts(arg) and not callable(full[arg]):
            full[arg] = resolve_spec(ref_kind, full[arg], lookup)
    # a default a recipe cannot hold (a function, a Path, nan, 2**70) stays the component's own:
    # left out, so recipe.yaml still loads and the component still gets that default
    full = {k: v for k, v in plain(full).items() if k in args or _recordable(v)}
    return {"name": name, **full}


def _recordable(value: Any) -> bool:
    """Whether a recipe (YAML) can hold ``value`` as it is."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _recordable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_recordable(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)  # JSON has no nan/inf: they would be saved as null
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63  # what a recipe may hold (clfkit.recipe)
    return value is None or isinstance(value, (bool, str))


def plain(value: Any) -> Any:
    """Make validated values YAML/JSON friendly (tuples -> lists, models -> dicts)."""
    if isinstance(value, BaseModel):
        return plain(value.model_dump())
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
