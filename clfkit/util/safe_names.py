"""The one rule for names that become folder names: run names (a recipe's ``name:``), sweep
folders and sweep runs (``lr=0.001,norm=bn``, variant and value labels); and the rule for class
names that only look alike (:func:`class_key`).

A name is one plain path component: it can never be ``..``, hold a separator, be absolute or
hide a control character, so a folder made from it always stays inside its parent and a
clean-up of it can never reach anything else.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from clfkit.errors import BadNameError, DataError

MAX_LENGTH = 200  # file systems allow 255 bytes per component; leave room for "-2", ".onnx"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.,=+\-]*")
ALLOWED = (
    f"letters, digits and _ . , = + - (ASCII), starting with a letter or digit, "
    f"at most {MAX_LENGTH} characters"
)
_NOT_ALLOWED_CHAR = re.compile(r"[^A-Za-z0-9_.,=+\-]")


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
        raise BadNameError(
            f"{what} {name!r} {problem}; a {what} becomes a folder name, so it may only hold {ALLOWED}"
        )
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
        raise BadNameError(f"{path} is not a folder directly inside {parent} (a symlink?); not touching it")
    return path


# --------------------------------------------------------------------------- class names
def class_key(name: str) -> str:
    """What two class names that print alike share: Unicode NFC form (a folder made on macOS
    spells 'café' as 'cafe' + a combining accent, NFD), invisible format characters (a
    zero-width space) dropped, surrounding whitespace trimmed. Case is kept: 'A' and 'a' are
    two classes in a letters dataset (EMNIST) and print differently."""
    visible = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")
    return unicodedata.normalize("NFC", visible).strip()


def _spellings(pairs: list[tuple[str, str]]) -> str:
    # ascii(), not repr(): repr shows NFD 'cafe\u0301' as 'café', the very look-alike being reported
    return "; ".join(f"{ascii(a)} and {ascii(b)}" for a, b in pairs[:5]) + (
        f" and {len(pairs) - 5} more pair(s)" if len(pairs) > 5 else ""
    )


def check_class_names(names: list[str], where: str) -> None:
    """A DataError when two of ``names`` (the classes of ``where``) have one :func:`class_key`:
    they would print identically as two classes."""
    first: dict[str, str] = {}
    pairs = []
    for name in names:
        other = first.setdefault(class_key(name), name)
        if other != name:
            pairs.append((other, name))
    if pairs:
        raise DataError(
            f"{where} has class names that differ only in Unicode normalization (NFC/NFD), "
            f"invisible characters or surrounding whitespace: {_spellings(pairs)}; they would "
            f"print as the same name. Rename one of each pair (merge the folders, or fix the labels)"
        )


def check_same_spelling(a: list[str], b: list[str], a_what: str, b_what: str) -> None:
    """A DataError when a name of ``a`` and one of ``b`` differ but have one :func:`class_key`:
    the same class to a reader, two classes to clfkit. Both spellings named."""
    keys = {class_key(n): n for n in a}
    pairs = [(keys[class_key(n)], n) for n in b if class_key(n) in keys and keys[class_key(n)] != n]
    if pairs:
        raise DataError(
            f"{a_what} and {b_what} spell the same class differently (Unicode NFC/NFD, "
            f"invisible characters or surrounding whitespace): {_spellings(pairs)}. Rename one so "
            f"both spell it identically"
        )
