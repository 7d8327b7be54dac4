"""The one "did you mean" of clfkit: the nearest known names to a mistyped one, and the hint
that every unknown-name message (components, recipe fields, component arguments, timm
architectures, `clfkit plugins show`) ends with, so they all suggest the same way."""

from __future__ import annotations

import difflib
from typing import Iterable


def nearest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``name``, closest first (difflib's ratio of at
    least ``cutoff``), then any that differ from it only in case."""
    known = list(choices)
    close = difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
    return close + [c for c in known if c.lower() == name.lower() and c not in close]


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a' or 'b'?"`` for the nearest ``choices``, or ``""`` when none is near."""
    close = nearest(name, choices, n=n, cutoff=cutoff)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
