"""Planning a sweep: the axes (--grid, a sweep file's block), their labels and overlaps, and
the trials (one validated recipe per combination). Nothing here trains or writes."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from clfkit.train.build import check_model_size
from clfkit.errors import RecipeError, SweepError
from clfkit.util.safe_names import check_name, name_problem, safe_label
from clfkit.recipe import (
    SEED_MAX,
    Recipe,
    apply_override,
    parse_override,
    parse_overrides,
    read_yaml,
    seed_range_problem,
    validate_recipe,
)
from clfkit.run.run_folder import RunFolder
from clfkit.util.yaml_text import YAMLProblem, parse_value


# The most runs one sweep plans (grid combinations x seeds): each is a validated recipe, a run
# folder and a row of the tables, so a typo like --seeds 100000000 must fail at once, not plan for hours.
MAX_RUNS = 1000


def check_run_count(runs: int, what: str) -> None:
    """A SweepError naming the count and the cap when ``runs`` is over MAX_RUNS."""
    if runs > MAX_RUNS:
        raise SweepError(
            f"{what} make {runs:,} runs; a sweep plans at most {MAX_RUNS:,}. Give fewer values or "
            f"seeds, or split it into several sweeps (each its own --out)"
        )


def check_jobs(jobs: int, what: str, error: type[Exception] = SweepError) -> None:
    """An ``error`` when ``jobs`` worker processes are more than this machine's cores: each is a
    process with its own torch (about half a GB) and at least one thread, so more of them than
    cores run no faster and can exhaust memory (``--jobs 500`` spawned 500 interpreters)."""
    cores = os.cpu_count() or 1
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise error(f"--jobs {jobs!r}: give a whole number of {what} at once, from 1 to {cores}")
    if jobs > cores:
        raise error(
            f"--jobs {jobs}: this machine has {cores} CPU core(s); each of the {what} at once is a process "
            f"with its own copy of torch and at least one core's thread, so more than {cores} run no faster "
            f"and may run out of memory. Give --jobs {cores} or fewer"
        )


# --------------------------------------------------------------------------- axes
@dataclass
class Axis:
    """One dimension of the grid: a dotted path (or ``variant``) and its labelled options,
    each option being the overrides it applies."""

    key: str
    options: list[tuple[str, dict[str, Any]]]


def split_top_level(raw: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes: ``0,[1,2],{a: 1},"a,b"`` -> 4 items."""
    items, depth, cur, quote = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and (cur.rstrip()[-1:] in ("", "[", "{", ",", ":") or cur[-1:] == ch == "'"):
            quote = ch  # a quote opens a YAML scalar only at its start ('' inside '...' is one quote)
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items]


def _parse_value(text: str) -> Any:
    """One --grid value, read exactly as --set and sweep files read it."""
    try:
        return parse_value(text)
    except YAMLProblem as e:
        raise SweepError(f"--grid value {text[:80]!r}: {e}") from None


def _label(value: Any) -> str:
    """A short, path-safe text for a value: 0.001, batch, group-groups8, none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        name = str(value.get("name", "x"))
        args = "".join(f"-{k}{_label(v)}" for k, v in value.items() if k != "name")
        return name + args
    if isinstance(value, (list, tuple)):
        return "-".join(_label(v) for v in value) or "empty"
    return str(value)


def parse_grid(text: str) -> Axis:
    """``"optim.lr=1e-3,5e-4"`` -> Axis("optim.lr", [("1e-3", {...}), ("5e-4", {...})])."""
    if "=" not in text:
        raise SweepError(f"--grid {text!r}: expected dotted.path=value1,value2,...")
    key, _, raw = text.partition("=")
    keys, _ = parse_override(f"{key.strip()}=0")  # same path rules as --set
    items = split_top_level(raw)
    if not raw.strip() or any(not i for i in items):
        raise SweepError(f"--grid {text!r}: empty value; write values separated by commas")
    check_run_count(
        len(items), f"the {len(items):,} values of --grid {key.strip()[:80]}"
    )  # before parsing each
    path = ".".join(keys)
    return Axis(
        path,
        [
            (_value_label(item, value), {path: value})
            for item, value in ((item, _parse_value(item)) for item in items)
        ],
    )


def _value_label(text: str, value: Any) -> str:
    """A --grid value's label: its text as typed when that is a valid name (``1e-3``), else
    one made from the value (``[1024,512]`` -> ``1024-512``)."""
    return text if name_problem(text) is None else safe_label(_label(value))


def _dotted_path(key: Any, source: str) -> str:
    """A sweep-file key as a dotted path, checked as --set checks its paths."""
    if not isinstance(key, str):
        raise SweepError(f"{source}: sweep key {key!r} is not a dotted.path like optim.lr")
    try:
        return ".".join(parse_override(f"{key}=0")[0])
    except RecipeError:
        raise SweepError(f"{source}: sweep key {key!r} is not a dotted.path like optim.lr") from None


def axes_from_block(block: Any, source: str) -> list[Axis]:
    """The axes of a ``sweep:`` block (see the module docstring)."""
    if not isinstance(block, dict) or not block:
        raise SweepError(f"{source}: 'sweep:' must be a mapping of dotted.path: [values] (and/or variants:)")
    axes = []
    for key, spec in block.items():
        if key == "variants":
            if not isinstance(spec, dict) or not spec:
                raise SweepError(
                    f"{source}: sweep.variants must map a name to its overrides, "
                    f"e.g. {{full: {{}}, wo_bn: {{model.norm: none}}}}"
                )
            options = []
            for name, sets in spec.items():
                if sets is None:
                    sets = {}
                if not isinstance(sets, dict):
                    raise SweepError(
                        f"{source}: sweep.variants.{name} must be a mapping of "
                        f"dotted.path: value, got {sets!r}"
                    )
                label = check_name(str(name), "sweep variant name")
                options.append((label, {_dotted_path(k, source): v for k, v in sets.items()}))
            axes.append(Axis("variant", options))
        elif isinstance(spec, dict):  # labelled values: the user names them
            path = _dotted_path(key, source)
            axes.append(
                Axis(
                    path,
                    [(check_name(str(label), "sweep value label"), {path: v}) for label, v in spec.items()],
                )
            )
        elif isinstance(spec, list) and spec:
            path = _dotted_path(key, source)
            axes.append(Axis(path, [(safe_label(_label(v)), {path: v}) for v in spec]))
        else:
            raise SweepError(
                f"{source}: sweep.{key} must be a non-empty list of values "
                f"(or a mapping label: value), got {spec!r}"
            )
    return axes


def short_names(axes: list[Axis]) -> dict[str, str]:
    """optim.lr -> lr, unless two axes end the same way (then the whole path)."""
    last = [a.key.split(".")[-1] for a in axes]
    return {a.key: (s if last.count(s) == 1 else a.key) for a, s in zip(axes, last)}


# --------------------------------------------------------------------------- planning
@dataclass
class Trial:
    name: str  # run folder name, e.g. "lr=0.001,head_dropout=0.3"
    values: dict[str, str]  # axis key -> option label
    overrides: dict[str, Any]  # dotted path -> value
    recipe: Recipe
    run_dir: Path
    status: str = "new"  # new | done | unfinished | failed | skipped
    error: str = ""
    seconds: float = 0.0


@dataclass
class Sweep:
    recipe_path: Path
    out: Path
    axes: list[Axis]
    trials: list[Trial]
    seeds: int = 1  # runs per variant, each under its own seed (clfkit.studies.sweep.seeds)
    written: list[Path] = dataclasses.field(default_factory=list)  # the tables and figures write_tables wrote
    removed: list[Path] = dataclasses.field(default_factory=list)  # stale ones of an earlier sweep it removed


SEED_AXIS = "seed"  # the axis --seeds adds: its runs are one variant's repeats


def pop_seeds(block: Any, source: str) -> tuple[Any, Optional[int]]:
    """(the sweep block without its ``seeds: N`` key, N or None)."""
    if not isinstance(block, dict) or "seeds" not in block:
        return block, None
    block = dict(block)
    n = block.pop("seeds")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SweepError(
            f"{source}: sweep.seeds must be a whole number of seeds per variant (1 or more), got {n!r}"
        )
    return (block or None), n


def seed_axis(seeds: int, base_seed: int) -> list[Axis]:
    """The ``seed`` axis of ``--seeds N``: the recipe's seed, then the next N - 1 (none for N = 1);
    a SweepError when the last of them is past the valid seeds."""
    if seeds <= 1:
        return []
    if base_seed + seeds - 1 > SEED_MAX:
        raise SweepError(
            f"--seeds {seeds} (or sweep.seeds) from the recipe's seed {base_seed} runs seeds {base_seed} to "
            f"{base_seed + seeds - 1}, and {seed_range_problem(base_seed + seeds - 1)}; lower the "
            f"recipe's seed (--set seed=...) or the number of seeds"
        )
    return [Axis(SEED_AXIS, [(str(base_seed + i), {"seed": base_seed + i}) for i in range(seeds)])]


def plan_sweep(
    recipe_path: str | Path,
    grid: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    out: Optional[str | Path] = None,
    seeds: Optional[int] = None,
) -> Sweep:
    """Read the recipe (and its ``sweep:`` block), add ``--grid`` axes (and the seed axis of
    ``seeds``, default the block's ``seeds:``), and validate every combination's recipe before
    anything trains."""
    recipe_path = Path(recipe_path)
    data = read_yaml(recipe_path)
    block, file_seeds = pop_seeds(data.pop("sweep", None), str(recipe_path))
    seeds = seeds if seeds is not None else (file_seeds or 1)
    axes = axes_from_block(block, str(recipe_path)) if block is not None else []
    given: set[str] = set()
    for text in grid:  # a --grid axis replaces a sweep-file axis of the same path
        axis = parse_grid(text)
        if axis.key in given:
            raise SweepError(
                f"--grid {axis.key} is given twice; give all its values in one --grid {axis.key}=v1,v2,..."
            )
        given.add(axis.key)
        axes = [a for a in axes if a.key != axis.key] + [axis]
    if not axes and seeds <= 1:
        raise SweepError(
            f"nothing to sweep: give --grid dotted.path=v1,v2, --seeds N or a 'sweep:' block in {recipe_path}"
        )
    check_run_count(
        math.prod(len(a.options) for a in axes) * seeds,
        " x ".join([f"{len(a.options):,} {a.key} values" for a in axes] + [f"{seeds:,} seeds"] * (seeds > 1)),
    )
    if seeds > 1 and any(a.key == SEED_AXIS for a in axes):
        raise SweepError(
            "--seeds N (or sweep.seeds) runs every variant under N seeds, and a 'seed' axis sweeps "
            "the seed too: give one of them"
        )
    fixed = parse_overrides(overrides)
    base_data = copy.deepcopy(data)
    for keys, value in fixed:
        apply_override(base_data, keys, value)
    base = validate_recipe(base_data, source=str(recipe_path))
    axes = axes + seed_axis(seeds, base.seed)
    _check_overlaps(axes)
    out = Path(out) if out is not None else Path("sweeps") / check_name(base.name, "sweep name")
    trials = _plan_trials(data, fixed, axes, base.name, out, recipe_path)
    names = [t.name for t in trials]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(
            f"two combinations would share the run folder {dupes[0]!r}; give the values labels "
            f"(sweep: {{path: {{label: value}}}})"
        )
    return Sweep(recipe_path, out, axes, trials, seeds)


def _plan_trials(
    data: dict,
    fixed: list[tuple[list[str], Any]],
    axes: list[Axis],
    base_name: str,
    out: Path,
    recipe_path: Path,
) -> list[Trial]:
    """One validated Trial per combination of the axes' options."""
    short = short_names(axes)
    trials, problems = [], []
    for combo in itertools.product(*(a.options for a in axes)):
        values = {a.key: label for a, (label, _) in zip(axes, combo)}
        parts = [
            label if a.key == "variant" else f"{short[a.key]}={label}" for a, (label, _) in zip(axes, combo)
        ]
        name = check_name(",".join(parts), "sweep run name")
        sets: dict[str, Any] = {}
        for _, o in combo:
            sets.update(o)
        d = copy.deepcopy(data)
        d["name"] = f"{base_name}-{name}"[:200]
        try:
            for keys, value in _merge_order(fixed, sets):
                apply_override(d, keys, copy.deepcopy(value))
            recipe = validate_recipe(d, source=f"{recipe_path} [{name}]")
            check_model_size(recipe, source=f"{recipe_path} [{name}]")
        except RecipeError as e:
            problems.append(str(e))
            continue
        trials.append(Trial(name, values, sets, recipe, out / name))
    if problems:
        raise SweepError(
            "some combinations are not valid recipes (nothing was trained):\n" + "\n".join(problems)
        )
    return trials


def _merge_order(fixed: list[tuple[list[str], Any]], sets: dict[str, Any]) -> list[tuple[list[str], Any]]:
    """--set overrides, then the combination's values (which win on the same path), applied
    shallow paths first: a component (``optim``) is replaced before one of its fields
    (``optim.lr``) is set on top, whatever order the axes came in."""
    swept = set(sets)
    merged = [(keys, v) for keys, v in fixed if ".".join(keys) not in swept]
    merged += [(path.split("."), v) for path, v in sets.items()]
    return sorted(merged, key=lambda kv: len(kv[0]))  # stable: same depth keeps its order


def _check_overlaps(axes: list[Axis]) -> None:
    """Two axes may not set the same path, and a value that replaces a component may not also
    set a field that another axis sweeps: either way one would silently win over the other
    and a run's label would lie about what it trained with."""
    sets = [(a, path, value) for a in axes for _, o in a.options for path, value in o.items()]
    for first, second in itertools.permutations(sets, 2):
        (outer, outer_path, value), (inner, inner_path, _) = first, second
        if outer is inner:
            continue
        if outer_path == inner_path:
            raise SweepError(
                f"sweep axes {outer.key!r} and {inner.key!r} both set {outer_path}; "
                f"sweep it in one axis (or in the variants only)"
            )
        field = inner_path[len(outer_path) + 1 :] if inner_path.startswith(outer_path + ".") else ""
        if field and _sets_field(value, field.split(".")):
            raise SweepError(
                f"sweep axis {outer.key!r} gives {outer_path} a value that sets {field} "
                f"({value!r}), and axis {inner.key!r} sweeps {inner_path}: one would win "
                f"silently; drop {field} from the {outer.key!r} values"
            )


def _sets_field(value: Any, field: list[str]) -> bool:
    """Whether ``value`` (a component or mapping) spells out ``field`` (a dotted path in it)."""
    for part in field:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False
    return True


def check_same_recipe(trial: Trial) -> None:
    """A run folder left by an earlier sweep must hold this combination's recipe: a changed
    base recipe would otherwise mix old and new runs in one table."""
    saved = RunFolder(trial.run_dir).recipe
    if not saved.is_file():
        return
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return
    new = trial.recipe.to_dict()
    if old == new:
        return
    diff = sorted(_diff_paths(old, new))
    raise SweepError(
        f"{trial.run_dir} holds a run of a different recipe (differs at: {', '.join(diff[:5])}); "
        f"delete that folder or sweep into another --out"
    )


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(root)"]
