"""The one rule for names that become folder names: run names (a recipe's ``name:``), sweep
folders and sweep runs (``lr=0.001,norm=bn``, variant and value labels).

A name is one plain path component: it can never be ``..``, hold a separator, be absolute or
hide a control character, so a folder made from it always stays inside its parent and a
clean-up of it can never reach anything else.
"""
from __future__ import annotations

import re
from pathlib import Path

from clfkit.errors import ClfkitError

MAX_LENGTH = 200  # file systems allow 255 bytes per component; leave room for "-2", ".onnx"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+\-]*")
ALLOWED = (f"letters, digits and _ . , = + - (ASCII), starting with a letter or digit, "
           f"at most {MAX_LENGTH} characters")
_NOT_ALLOWED_CHAR = re.compile(r"[^A-Za-z0-9_.,=+\-]")


class BadNameError(ClfkitError):
    """A name that cannot safely be a folder name."""


def name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a folder name, or None when it follows the rule."""
    if not isinstance(name, str):
        return f"must be text, got {type(name).__name__}"
    if not name:
        return "is empty"
    if len(name) > MAX_LENGTH:
        return f"is {len(name)} characters long"
    if NAME_RE.fullmatch(name):
        return None
    bad = _NOT_ALLOWED_CHAR.search(name)
    if bad is not None:
        return f"holds {bad.group()!r} at position {bad.start() + 1}"
    return f"starts with {name[0]!r}"


def check_name(name: object, what: str = "name") -> str:
    """``name`` itself, or a :class:`BadNameError` naming it, saying why and what is allowed."""
    problem = name_problem(name)
    if problem is not None:
        raise BadNameError(f"{what} {name!r} {problem}; a {what} becomes a folder name, so it may "
                         f"only hold {ALLOWED}")
    return name


def safe_label(text: str) -> str:
    """``text`` made to follow the rule (for labels made from values, which the user did not
    choose as names): other characters become ``_``, and a ``v`` goes first when it would
    not start with a letter or digit."""
    label = _NOT_ALLOWED_CHAR.sub("_", text)[:MAX_LENGTH] or "empty"
    return label if label[0].isalnum() else ("v" + label)[:MAX_LENGTH]


def child_folder(parent: str | Path, name: str, what: str = "name") -> Path:
    """``parent/name`` once ``name`` follows the rule and the result, symlinks resolved, is
    directly inside ``parent``: safe to create, and to delete."""
    check_name(name, what)
    path = Path(parent) / name
    if path.is_symlink() or path.resolve().parent != Path(parent).resolve():
        raise BadNameError(f"{path} is not a folder directly inside {parent} (a symlink?); "
                         f"not touching it")
    return path
