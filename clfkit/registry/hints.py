"""Type hints as text: what the README's component reference and `clfkit plugins show` print
for a component's arguments (``float (>= 0, < 1)``, ``'a' | 'b'``)."""
from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic import BaseModel


def type_hints(obj: Any) -> dict[str, Any]:
    """The type hints of a component's arguments (a class's ``__init__``); {} when they cannot
    be resolved (unresolvable forward references: the arguments are then checked untyped)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:
        return {}


def _constraints(meta: list[Any]) -> list[str]:
    out = []
    for m in meta:
        inner = getattr(m, "metadata", None)
        if isinstance(inner, list):  # a pydantic FieldInfo from Field(ge=..., ...)
            out += _constraints(inner)
            continue
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if hasattr(m, attr) and getattr(m, attr) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
    return out


def type_text(ann: Any, models: dict[str, type] | None = None, literal_sep: str = " \\| ") -> str:
    """A short, stable description of a type hint: ``float (>= 0, < 1)``, ``'a' | 'b'``.
    Pydantic models met on the way are collected in ``models`` (the README documents them);
    ``literal_sep`` joins a Literal's choices (escaped for markdown tables by default)."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is inspect.Parameter.empty or ann is Any or ann is object:
        return "any"
    if ann is type(None):
        return "null"
    if origin is typing.Annotated:
        base = type_text(args[0], models, literal_sep)
        cons = _constraints(list(args[1:]))
        return f"{base} ({', '.join(cons)})" if cons else base
    if origin is typing.Literal:
        return literal_sep.join(repr(a) for a in args)
    if origin is typing.Union or type(ann).__name__ == "UnionType":
        return " or ".join(type_text(a, models, literal_sep) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(type_text(a, models, literal_sep) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if inspect.isclass(ann) and issubclass(ann, BaseModel) and models is not None:
        models[ann.__name__] = ann
    return ann.__name__ if inspect.isclass(ann) else str(ann).replace("typing.", "")
