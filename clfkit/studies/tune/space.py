"""The search space of ``clfkit tune``: ``--space dotted.path=kind(args)`` parsed and checked
against the recipe; the grid a ``choice()``-only space spans. Also tune's error and its one
import of Optuna (an optional dependency)."""

from __future__ import annotations

import copy
import itertools
import random
import re
from dataclasses import dataclass
from typing import Any

from clfkit.errors import ClfkitError, TuneError
from clfkit.recipe import apply_override, parse_override, validate_recipe
from clfkit.studies.sweep.plan import split_top_level
from clfkit.util.yaml_text import YAMLProblem, parse_value

KINDS = {"uniform": 2, "loguniform": 2, "int": 2, "logint": 2, "choice": None}  # kind -> argument count


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError:
        raise TuneError(
            'clfkit tune needs Optuna: pip install -e ".[tune]" (or pip install optuna)'
        ) from None
    return optuna


@dataclass
class Dimension:
    """One searched field: ``key`` (dotted path), ``kind`` (see KINDS) and its arguments."""

    key: str
    kind: str
    args: list[Any]
    text: str = ""

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.args)
        lo, hi = self.args
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.key, lo, hi, log=self.kind == "logint")
        return trial.suggest_float(self.key, float(lo), float(hi), log=self.kind == "loguniform")

    def describe(self) -> str:
        return f"{self.key}={self.kind}({','.join(map(str, self.args))})"


def parse_space(text: str) -> Dimension:
    """``"optim.lr=loguniform(1e-4,1e-1)"`` -> Dimension; the shape only (see check_space)."""
    key, _, spec = text.partition("=")
    try:
        path, _ = parse_override(f"{key.strip()}=0")  # the dotted-path rule of --set
    except ClfkitError:
        raise TuneError(
            f"--space {text!r}: expected dotted.path=kind(args), e.g. optim.lr=loguniform(1e-4,1e-1)"
        ) from None
    m = re.fullmatch(r"\s*([a-z]+)\s*\((.*)\)\s*", spec, re.S)
    if not m or m.group(1) not in KINDS:
        raise TuneError(f"--space {text!r}: the value must be one of {', '.join(k + '(...)' for k in KINDS)}")
    kind = m.group(1)
    texts = split_top_level(m.group(2))
    if "" in texts:  # choice(0.1,) would search 0.1 and the empty string
        raise TuneError(
            f"--space {text!r}: an empty value; write {kind}(v1,v2,...) with values between the commas"
        )
    try:
        args = [parse_value(a) for a in texts]
    except YAMLProblem as e:
        raise TuneError(f"--space {text!r}: {e}") from None
    need = KINDS[kind]
    if need is not None and len(args) != need:
        raise TuneError(f"--space {text!r}: {kind} takes {need} values (low, high), got {len(args)}")
    if need is not None:
        numbers = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)
        if not numbers or not args[0] < args[1]:
            raise TuneError(f"--space {text!r}: {kind} needs two numbers, low < high")
        if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
            raise TuneError(f"--space {text!r}: {kind} needs whole numbers")
        if kind.startswith("log") and args[0] <= 0:
            raise TuneError(f"--space {text!r}: {kind} needs low > 0")
    if kind == "choice":
        _check_choices(text, args)
    return Dimension(".".join(path), kind, args, text)


def _check_choices(text: str, args: list[Any]) -> None:
    """choice() values Optuna can store and tell apart: it keeps a categorical parameter as
    the index of the first choice ``==`` to it, so 0 and 0.0 (or 1 and true) would both run
    as the first, and a list or mapping is not a storable choice at all."""
    if not args:
        raise TuneError(f"--space {text!r}: choice needs at least one value")
    for a in args:
        if a is not None and not isinstance(a, (bool, int, float, str)):
            raise TuneError(
                f"--space {text!r}: choice values must be numbers, strings, true/false or null, "
                f"not {a!r}; search lists and mappings with clfkit sweep --grid"
            )
    for i, a in enumerate(args):
        same = next((b for b in args[:i] if b == a or (a != a and b != b)), _NONE)  # a != a: nan
        if same is not _NONE:
            raise TuneError(
                f"--space {text!r}: choice needs distinct values; {same!r} and {a!r} are the same "
                f"value to Optuna (give one of them)"
            )


_NONE = object()


def check_space(data: dict, dims: list[Dimension], source: str) -> None:
    """Validate the recipe with each bound (or choice) of each dimension in place, so a wrong
    path (with its did-you-mean), a wrong type or an out-of-range bound is the recipe's own
    error, named by its --space. Two dimensions on one path are refused."""
    seen = [d.key for d in dims]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise TuneError(f"--space: {', '.join(twice)} given more than once")
    for d in dims:
        for value in d.args:  # each choice, or both bounds: values the field must accept
            trial = copy.deepcopy(data)
            apply_override(trial, d.key.split("."), value)
            validate_recipe(
                trial, source=f"{source} with --space {d.text or d.describe()} ({d.key}={value!r})"
            )


def grid_size(dims: list[Dimension]) -> int:
    """How many combinations --sampler grid walks."""
    size = 1
    for d in dims:
        size *= len(d.args)
    return size


def grid_points(dims: list[Dimension], seed: int) -> list[dict[str, Any]]:
    """Every combination of the dimensions' choice() values, in an order shuffled by ``seed``
    (the same order every time, whatever the order of the --space options: a continued grid
    takes up where it stopped)."""
    dims = sorted(dims, key=lambda d: d.key)  # the order of the --space options changes nothing
    points = [
        dict(zip((d.key for d in dims), values)) for values in itertools.product(*(d.args for d in dims))
    ]
    random.Random(seed).shuffle(points)
    return points


def point_key(params: dict[str, Any], dims: list[Dimension]) -> tuple[str, ...]:
    """A grid point as a hashable key (repr keeps 1 and 1.0 apart, as the recipe does)."""
    return tuple(repr(params.get(d.key)) for d in dims)
