"""Sweeps: one recipe, a grid of overrides, one run folder per combination, and a table of
the runs ranked by best val accuracy.

    clfkit sweep RECIPE --grid optim.lr=1e-3,5e-4 --grid model.head_dropout=0,0.3 --jobs 2

or a sweep file: a recipe with a ``sweep:`` block (removed before the recipe is validated)::

    sweep:
      optim.lr: [1.0e-3, 5.0e-4]            # a grid axis: dotted path -> values
      model.norm: {bn: batch, no_bn: none}  # labelled values: the label names the run
      variants:                             # one axis of named override sets (ablations)
        full: {}
        wo_drop: {model.head_dropout: 0.0}

The runs are the Cartesian product of the axes. Each run folder is named by its values
(``lr=0.001,norm=bn``) under ``--out`` (default ``sweeps/<recipe name>``). Running the same
sweep again skips finished runs (those with summary.json), resumes unfinished ones from their
last.pt when the trainer can, and restarts the others. At the end it writes::

    sweep.csv, sweep.md   one row per run, best val acc first: the varied values, best val acc,
                          its epoch, train acc and test acc at that epoch, wall time
    sweep.json            the base recipe, the axes and every run's values
    compare.png           the top 10 runs' curves overlaid (see clfkit.run.plots.plot_compare)
"""
from __future__ import annotations

import copy
import csv
import itertools
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from clfkit.build import check_model_size
from clfkit.errors import ClfkitError, RecipeError
from clfkit.names import check_name, child_folder, name_problem, safe_label
from clfkit.io import atomic_open, write_json, write_text
from clfkit.recipe import Recipe, apply_override, parse_override, read_yaml, validate_recipe
from clfkit.report_html import write_folder_report
from clfkit.run.folder import LOCK_NAME, RunFolder, run_lock
from clfkit.run.reader import RunInfo, is_run, rank, read_run
from clfkit.tracking import parent_run
from clfkit.signals import Interrupted, StopFlag, catch_stop_signals
from clfkit.yamltext import YAMLProblem, parse_value


class SweepError(ClfkitError):
    """A sweep that cannot be planned or whose folders do not match it."""


# --------------------------------------------------------------------------- axes
@dataclass
class Axis:
    """One dimension of the grid: a dotted path (or ``variant``) and its labelled options,
    each option being the overrides it applies."""

    key: str
    options: list[tuple[str, dict[str, Any]]]


def _split_top_level(raw: str) -> list[str]:
    """Split on commas outside brackets and braces: ``0,[1,2],{a: 1}`` -> 3 items."""
    items, depth, cur = [], 0, ""
    for ch in raw:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
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
    items = _split_top_level(raw)
    if not raw.strip() or any(not i for i in items):
        raise SweepError(f"--grid {text!r}: empty value; write values separated by commas")
    path = ".".join(keys)
    return Axis(path, [(_value_label(item, value), {path: value})
                       for item, value in ((item, _parse_value(item)) for item in items)])


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
                raise SweepError(f"{source}: sweep.variants must map a name to its overrides, "
                                 f"e.g. {{full: {{}}, wo_bn: {{model.norm: none}}}}")
            options = []
            for name, sets in spec.items():
                if sets is None:
                    sets = {}
                if not isinstance(sets, dict):
                    raise SweepError(f"{source}: sweep.variants.{name} must be a mapping of "
                                     f"dotted.path: value, got {sets!r}")
                label = check_name(str(name), "sweep variant name")
                options.append((label, {_dotted_path(k, source): v for k, v in sets.items()}))
            axes.append(Axis("variant", options))
        elif isinstance(spec, dict):   # labelled values: the user names them
            path = _dotted_path(key, source)
            axes.append(Axis(path, [(check_name(str(label), "sweep value label"), {path: v})
                                    for label, v in spec.items()]))
        elif isinstance(spec, list) and spec:
            path = _dotted_path(key, source)
            axes.append(Axis(path, [(safe_label(_label(v)), {path: v}) for v in spec]))
        else:
            raise SweepError(f"{source}: sweep.{key} must be a non-empty list of values "
                             f"(or a mapping label: value), got {spec!r}")
    return axes


def _short_names(axes: list[Axis]) -> dict[str, str]:
    """optim.lr -> lr, unless two axes end the same way (then the whole path)."""
    last = [a.key.split(".")[-1] for a in axes]
    return {a.key: (s if last.count(s) == 1 else a.key) for a, s in zip(axes, last)}


# --------------------------------------------------------------------------- planning
@dataclass
class Trial:
    name: str                      # run folder name, e.g. "lr=0.001,head_dropout=0.3"
    values: dict[str, str]         # axis key -> option label
    overrides: dict[str, Any]      # dotted path -> value
    recipe: Recipe
    run_dir: Path
    status: str = "new"            # new | done | unfinished | failed | skipped
    error: str = ""
    seconds: float = 0.0


@dataclass
class Sweep:
    recipe_path: Path
    out: Path
    axes: list[Axis]
    trials: list[Trial]


def plan_sweep(recipe_path: str | Path, grid: list[str] | tuple[str, ...] = (),
               overrides: list[str] | tuple[str, ...] = (), out: Optional[str | Path] = None) -> Sweep:
    """Read the recipe (and its ``sweep:`` block), add ``--grid`` axes, and validate every
    combination's recipe before anything trains."""
    recipe_path = Path(recipe_path)
    data = read_yaml(recipe_path)
    block = data.pop("sweep", None)
    axes = axes_from_block(block, str(recipe_path)) if block is not None else []
    given: set[str] = set()
    for text in grid:  # a --grid axis replaces a sweep-file axis of the same path
        axis = parse_grid(text)
        if axis.key in given:
            raise SweepError(f"--grid {axis.key} is given twice; give all its values in one --grid "
                             f"{axis.key}=v1,v2,...")
        given.add(axis.key)
        axes = [a for a in axes if a.key != axis.key] + [axis]
    if not axes:
        raise SweepError(f"nothing to sweep: give --grid dotted.path=v1,v2 or a 'sweep:' block in {recipe_path}")
    _check_overlaps(axes)
    fixed = [parse_override(text) for text in overrides]
    base_data = copy.deepcopy(data)
    for keys, value in fixed:
        apply_override(base_data, keys, value)
    base = validate_recipe(base_data, source=str(recipe_path))
    out = Path(out) if out is not None else Path("sweeps") / check_name(base.name, "sweep name")
    trials = _plan_trials(data, fixed, axes, base.name, out, recipe_path)
    names = [t.name for t in trials]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SweepError(f"two combinations would share the run folder {dupes[0]!r}; give the values labels "
                         f"(sweep: {{path: {{label: value}}}})")
    return Sweep(recipe_path, out, axes, trials)


def _plan_trials(data: dict, fixed: list[tuple[list[str], Any]], axes: list[Axis], base_name: str,
                 out: Path, recipe_path: Path) -> list[Trial]:
    """One validated Trial per combination of the axes' options."""
    short = _short_names(axes)
    trials, problems = [], []
    for combo in itertools.product(*(a.options for a in axes)):
        values = {a.key: label for a, (label, _) in zip(axes, combo)}
        parts = [label if a.key == "variant" else f"{short[a.key]}={label}" for a, (label, _) in zip(axes, combo)]
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
        raise SweepError("some combinations are not valid recipes (nothing was trained):\n" + "\n".join(problems))
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
            raise SweepError(f"sweep axes {outer.key!r} and {inner.key!r} both set {outer_path}; "
                             f"sweep it in one axis (or in the variants only)")
        field = inner_path[len(outer_path) + 1:] if inner_path.startswith(outer_path + ".") else ""
        if field and _sets_field(value, field.split(".")):
            raise SweepError(f"sweep axis {outer.key!r} gives {outer_path} a value that sets {field} "
                             f"({value!r}), and axis {inner.key!r} sweeps {inner_path}: one would win "
                             f"silently; drop {field} from the {outer.key!r} values")


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


def _check_same_recipe(trial: Trial) -> None:
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
    raise SweepError(f"{trial.run_dir} holds a run of a different recipe (differs at: {', '.join(diff[:5])}); "
                     f"delete that folder or sweep into another --out")


def _diff_paths(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [prefix or "(root)"]


# --------------------------------------------------------------------------- running
def run_trial(recipe_dict: dict, run_dir: str, quiet: bool = True, threads: int = 0) -> dict:
    """Train one combination into ``run_dir`` (a worker process's entry point): resume it
    from last.pt when it was started before and got that far, else start it afresh."""
    import torch

    from clfkit.trainer import train

    if threads:
        torch.set_num_threads(threads)
    # the run folder, the rmtree below included, never reaches outside the sweep folder
    run = child_folder(Path(run_dir).parent, Path(run_dir).name, "sweep run name")
    recipe = Recipe.model_validate(recipe_dict)
    folder = RunFolder(run)
    if run.exists() and not folder.finished:
        if folder.last.is_file():
            from clfkit.trainer import resume_run

            return {"summary": resume_run(run, quiet=quiet).summary, "resumed": True}
        if any(run.iterdir()) and not folder.recipe.is_file():
            raise SweepError(f"{run} exists and is not a clfkit run folder; not touching it")
        # a run started before that never got to last.pt: restart it, under its lock (another
        # sweep process may be training it right now) and keeping the lock file we hold
        with run_lock(run, "restart"):
            for child in run.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            return {"summary": train(recipe, run_dir=run, quiet=quiet).summary, "resumed": False}
    return {"summary": train(recipe, run_dir=run, quiet=quiet).summary, "resumed": False}


def _run_trial_safe(recipe_dict: dict, run_dir: str, quiet: bool, threads: int) -> dict:
    """run_trial, with a failure returned rather than raised (one bad run must not end the
    sweep); a stop signal ends the run resumable (last.pt) and is returned as ``interrupted``."""
    global _BUSY
    t0 = time.perf_counter()
    with catch_stop_signals():  # a signal before training starts still stops it (signals.py)
        _BUSY = True
        try:
            if _STOPPING is not None and _STOPPING.is_set():  # queued before the sweep stopped
                return {"ok": False, "not_started": True, "error": "", "seconds": 0.0}
            res = run_trial(recipe_dict, run_dir, quiet, threads)
            res["ok"] = True
        except Interrupted as e:
            res = {"ok": False, "interrupted": e.signum, "error": str(e)}
        except ClfkitError as e:
            res = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug, but the other runs still deserve to finish
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            _BUSY = False
    res["seconds"] = time.perf_counter() - t0
    return res


# In a --jobs worker process: the parent's "stop" event, and whether a run is in progress.
_STOPPING: Any = None
_BUSY = False


def _worker_init(stopping: Any) -> None:
    """A --jobs worker: ignore Ctrl-C while idle (the terminal sends it to every process; a
    run in progress handles it itself), and when the parent stops the sweep, stop the run in
    progress as SIGTERM would: it saves last.pt and returns."""
    global _STOPPING
    _STOPPING = stopping
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        stopping.wait()
        if _BUSY:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def run_sweep(recipe_path: str | Path, grid: list[str] | tuple[str, ...] = (),
              overrides: list[str] | tuple[str, ...] = (), out: Optional[str | Path] = None,
              jobs: int = 1, quiet: bool = False, log: Callable[[str], None] = print,
              top: int = 10) -> Sweep:
    """Plan, train what is not finished (``jobs`` at a time), and write the sweep tables.
    SIGINT/SIGTERM stops the whole sweep: no further run starts, the runs in progress save
    their last.pt, the tables are written, and :class:`Interrupted` says how to continue."""
    sweep = plan_sweep(recipe_path, grid, overrides, out)
    for t in sweep.trials:
        _check_same_recipe(t)
        t.status = "done" if RunFolder(t.run_dir).finished else ("unfinished" if t.run_dir.exists() else "new")
    todo = [t for t in sweep.trials if t.status != "done"]
    sweep.out.mkdir(parents=True, exist_ok=True)
    _write_manifest(sweep)
    n = len(sweep.trials)
    log(f"sweep {sweep.out}: {n} run(s), {n - len(todo)} already finished, {len(todo)} to train"
        + (f", {jobs} at a time" if jobs > 1 and len(todo) > 1 else ""))
    # MLflow (when a run tracks to it): the sweep is the parent run of its runs (clfkit.tracking)
    with parent_run(f"sweep {sweep.out.name}", {"recipe": str(recipe_path), "grid": " ".join(grid)}, sweep.out,
                    any("mlflow" in t.recipe.train.track for t in sweep.trials)), catch_stop_signals() as stop:
        if jobs <= 1 or len(todo) <= 1:
            for i, t in enumerate(todo, 1):
                if stop.pending:
                    break
                log(f"[{i}/{len(todo)}] {t.name}" + (" (resuming)" if t.status == "unfinished" else ""))
                _record(t, _run_trial_safe(t.recipe.to_dict(), str(t.run_dir), quiet, 0), log)
        else:
            _run_parallel(todo, jobs, log, stop)
        write_tables(sweep, top=top)
    if stop.pending:
        raise Interrupted(_stopped_message(sweep, stop.name), stop.signum)
    return sweep


def _stopped_message(sweep: Sweep, signame: str) -> str:
    stopped = [t.name for t in sweep.trials if t.status == "interrupted"]
    waiting = [t.name for t in sweep.trials if t.status in ("new", "unfinished")]
    return (f"{signame} received: sweep {sweep.out} stopped; "
            + (f"{len(stopped)} run(s) saved their last.pt mid-way ({', '.join(stopped)}); " if stopped else "")
            + f"{len(waiting)} run(s) not started. To continue, run the same `clfkit sweep` command "
              f"again: finished runs are skipped, stopped ones resume from their last.pt.")


def _run_parallel(todo: list[Trial], jobs: int, log: Callable[[str], None], stop: StopFlag) -> None:
    """Each run in its own process (spawned: no forked torch state), the cores split evenly.
    The parent polls for its stop flag, since a signal does not wake a blocked wait."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    stopping = ctx.Event()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(stopping,)) as pool:
        futures = {pool.submit(_run_trial_safe, t.recipe.to_dict(), str(t.run_dir), True, threads): t
                   for t in todo}
        log(f"started {len(todo)} run(s) in {jobs} processes, {threads} thread(s) each")
        pending, finished = set(futures), 0
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.cancelled():
                        continue
                    finished += 1
                    log(f"[{finished}/{len(todo)}] {futures[fut].name}")
                    _record(futures[fut], fut.result(), log)
                if stop.pending and not stopping.is_set():
                    stopping.set()  # the runs in progress save last.pt; queued ones do not start
                    for fut in pending:
                        fut.cancel()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _record(t: Trial, res: dict, log: Callable[[str], None]) -> None:
    t.seconds = res.get("seconds", 0.0)
    if res["ok"]:
        t.status = "done"
        s = res["summary"]
        val = s.get("best_val_acc")
        log(f"    done in {t.seconds:.0f}s: best val acc {val:.4f} (epoch {s.get('best_epoch')})"
            if val is not None else f"    done in {t.seconds:.0f}s")
    elif res.get("not_started"):
        log("    not started: the sweep is stopping")
    elif res.get("interrupted"):
        t.status = "interrupted"
        log(f"    stopped after {t.seconds:.0f}s; its last.pt resumes it")
    else:
        t.status, t.error = "failed", res["error"]
        log(f"    FAILED: {t.error.splitlines()[0] if t.error else ''}")


# --------------------------------------------------------------------------- tables
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ranked_runs(sweep: Sweep) -> list[tuple[Trial, Optional[RunInfo]]]:
    """Every trial with its run folder read back (None before it has one): finished runs by
    best val acc first, then the others in plan order."""
    infos = {t.name: read_run(t.run_dir, label=t.name.replace(",", ", ")) for t in sweep.trials
             if is_run(t.run_dir)}
    finished = rank([infos[t.name] for t in sweep.trials if t.name in infos and infos[t.name].finished], "val_acc")
    first = {r.path.name for r in finished}
    by_name = {t.name: t for t in sweep.trials}
    return ([(by_name[r.path.name], r) for r in finished]
            + [(t, infos.get(t.name)) for t in sweep.trials if t.name not in first])


def _row(sweep: Sweep, i: int, t: Trial, info: Optional[RunInfo]) -> dict[str, Any]:
    done = info is not None and info.finished
    row: dict[str, Any] = {"rank": i if done else None, "run": t.name}
    row.update({a.key: t.values[a.key] for a in sweep.axes})
    row.update({
        "best_val_acc": info.best_val_acc if info else None,
        "best_epoch": info.best_epoch if info else None,
        "train_acc": info.train_acc_at_best if info else None,
        "test_acc": info.test_acc if info else None,
        "epochs_run": len(info.history) if info else 0,
        "wall_seconds": round(info.wall_seconds, 1) if info and info.wall_seconds is not None else None,
        "status": "done" if done else (t.status if t.status == "failed" else "unfinished"),
    })
    if t.status == "failed" and t.error:
        row["status"] = "failed: " + t.error.splitlines()[0][:200]
    return row


def sweep_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """One row per run, ranked by best val acc (finished runs first)."""
    return [_row(sweep, i, t, info) for i, (t, info) in enumerate(_ranked_runs(sweep), 1)]


def write_tables(sweep: Sweep, top: int = 10) -> list[Path]:
    """sweep.csv, sweep.md and compare.png (top runs) in the sweep folder."""
    from clfkit.run.plots import plot_compare

    ranked = _ranked_runs(sweep)  # each run folder read once, for the tables and the figure
    rows = [_row(sweep, i, t, info) for i, (t, info) in enumerate(ranked, 1)]
    cols = list(rows[0]) if rows else []
    with atomic_open(sweep.out / "sweep.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()})
    short = _short_names(sweep.axes)
    head = ["#", "run"] + [short[a.key] for a in sweep.axes] + [
        "best val acc", "epoch", "train acc", "test acc", "epochs", "wall s", "status"]
    lines = [f"Sweep of `{sweep.recipe_path}`: {len(rows)} run(s), ranked by best val acc; train and test "
             f"acc are those of the best-val epoch (the test uses best.pt).", "",
             "| " + " | ".join(head) + " |",
             "|" + "|".join("---:" if 2 + len(sweep.axes) <= i < len(head) - 1 else "---"
                            for i in range(len(head))) + "|"]
    for r in rows:
        cells = [_fmt(r["rank"]), f"`{r['run']}`"] + [str(r[a.key]) for a in sweep.axes] + [
            _fmt(r["best_val_acc"]), _fmt(r["best_epoch"]), _fmt(r["train_acc"]), _fmt(r["test_acc"]),
            _fmt(r["epochs_run"]), _fmt(r["wall_seconds"], 1), r["status"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    write_text(sweep.out / "sweep.md", "\n".join(lines) + "\n")
    files = [sweep.out / "sweep.csv", sweep.out / "sweep.md"]
    finished = [info for _, info in ranked if info is not None and info.finished]
    if finished:
        files.append(plot_compare(finished[:top], sweep.out / "compare.png",
                                  title=f"{sweep.recipe_path.name}: top {min(top, len(finished))} of "
                                        f"{len(rows)} runs by best val acc"))
    files.append(write_folder_report(sweep.out, f"sweep {sweep.out.name}", lines[0].replace("`", ""), rows,
                                     [("Top runs", sweep.out / "compare.png")]))  # report.html
    return files


def _write_manifest(sweep: Sweep) -> None:
    write_json(sweep.out / "sweep.json", {
        "recipe": str(sweep.recipe_path),
        "axes": [{"key": a.key, "options": [{"label": lbl, "overrides": o} for lbl, o in a.options]}
                 for a in sweep.axes],
        "runs": [{"name": t.name, "values": t.values, "overrides": t.overrides} for t in sweep.trials],
    })
