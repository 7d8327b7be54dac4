"""Reading finished (or unfinished) run folders back: the per-epoch history, the summary and
the numbers the studies quote, "(best train, best val, test at best val)".

Used by ``clfkit compare``, the sweep tables and ``clfkit eval``; it only reads files the
trainer wrote (metrics.jsonl, summary.json), so it works on runs from any clfkit version that
wrote those.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clfkit.run.run_folder import SAMPLES_NPY, RunFolder, RunFolderError
from clfkit.errors import RunFileWarning


# metric -> True when larger is better; what ``--metric`` may sort by
METRICS = {"val_acc": True, "val_loss": False, "test_acc": True, "train_acc": True, "train_loss": False}
# metrics.jsonl values that must be finite numbers when present (the curves and rankings use them)
NUMERIC = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


# --------------------------------------------------------------------------- best.pt: one rule
# The trainer keeps best.pt by this rule, and RunInfo reads it back by the same rule:
# with a val split, the first epoch with the highest val acc; without one there is nothing
# honest to select on (train accuracy only rewards fitting the training data), so best.pt is
# the last epoch's weights.
SELECTED_ON_VAL, SELECTED_ON_LAST = "best_val_acc", "last_epoch"


def replaces_best(row: dict[str, Any], best_row: Optional[dict[str, Any]]) -> bool:
    """True when epoch ``row`` becomes best.pt instead of ``best_row`` (None: none yet)."""
    if best_row is None or row.get("val_acc") is None:
        return True
    return best_row.get("val_acc") is None or row["val_acc"] > best_row["val_acc"]


def selected_on(best_row: Optional[dict[str, Any]]) -> str:
    """How best.pt was chosen: ``best_val_acc`` or ``last_epoch`` (no val split)."""
    return (
        SELECTED_ON_VAL if best_row is not None and best_row.get("val_acc") is not None else SELECTED_ON_LAST
    )


def _row_problem(row: Any) -> Optional[str]:
    """Why a parsed metrics.jsonl line is not a usable epoch row (None when it is)."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    epoch = row.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"'epoch' is {epoch!r}, not a whole number >= 1"
    for key in NUMERIC:
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            return f"{key!r} is {v!r}, not a finite number"
    return None


# (file, warning) pairs already shown: a file read many times in one process (the trainer's
# metrics.csv every epoch, report + curves + compare) warns about its bad lines once
_WARNED: set[tuple[str, str]] = set()


def read_history(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of rows; a resumed run's re-written epochs keep only their
    latest row. A torn last line (a crash mid-write by an older, non-atomic clfkit) is
    ignored; any other unreadable line is skipped, with one RunFileWarning per file naming
    it and the line numbers (once per process for the same file and lines).

    Every reader of metrics.jsonl goes through here (compare, report, eval, sweeps, metrics.csv,
    the benchmarks), so they all skip and warn alike."""
    path = RunFolder(run).metrics
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror or e}") from None
    rows, problems = _parse_history(text)
    if problems:
        message = f"{path}, {'; '.join(problems)}; {'line' if len(problems) == 1 else f'{len(problems)} lines'} skipped"
        key = (str(path.resolve()), message)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(message, RunFileWarning, stacklevel=2)
    return [rows[e] for e in sorted(rows)]


def _parse_history(text: str) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """(row by epoch, the latest row of each; ``line N: why`` for each line skipped)."""
    rows: dict[int, dict[str, Any]] = {}
    problems: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines) and not text.endswith("\n"):
                continue  # torn last line
            row, problem = None, "not valid JSON"
        else:
            problem = _row_problem(row)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        rows[row["epoch"]] = row
    return rows, problems


@dataclass
class RunInfo:
    """One run folder, read back."""

    path: Path
    history: list[dict[str, Any]]
    summary: Optional[dict[str, Any]]
    label: str = ""

    @property
    def finished(self) -> bool:
        """:attr:`RunFolder.finished <clfkit.run.run_folder.RunFolder.finished>` (summary.json
        written), counting a summary.json that cannot be read as unfinished."""
        return self.summary is not None

    @property
    def best_row(self) -> Optional[dict[str, Any]]:
        """The epoch the trainer kept as best.pt (:func:`replaces_best`: best val acc, or the
        last epoch without a val split); the summary's best_epoch when the run finished."""
        if self.summary and self.summary.get("best_epoch"):
            for row in self.history:
                if row["epoch"] == self.summary["best_epoch"]:
                    return row
        best = None
        for row in self.history:
            if replaces_best(row, best):
                best = row
        return best

    @property
    def selected_on(self) -> str:
        """``best_val_acc``, or ``last_epoch`` for a run without a val split."""
        return selected_on(self.best_row)

    @property
    def best_epoch(self) -> Optional[int]:
        row = self.best_row
        return int(row["epoch"]) if row else None

    @property
    def best_val_acc(self) -> Optional[float]:
        row = self.best_row
        return row.get("val_acc") if row else None

    @property
    def train_acc_at_best(self) -> Optional[float]:
        row = self.best_row
        return row.get("train_acc") if row else None

    @property
    def best_train_acc(self) -> Optional[float]:
        accs = [r["train_acc"] for r in self.history if "train_acc" in r]
        return max(accs) if accs else None

    @property
    def test_acc(self) -> Optional[float]:
        return (self.summary or {}).get("test_acc")

    @property
    def wall_seconds(self) -> Optional[float]:
        if self.summary and self.summary.get("wall_seconds") is not None:
            return float(self.summary["wall_seconds"])
        secs = [r.get("seconds") for r in self.history if r.get("seconds") is not None]
        return float(sum(secs)) if secs else None

    def score(self, metric: str) -> Optional[float]:
        """The run's value of ``metric`` for ranking: best val acc, lowest val loss, test acc
        at the best epoch, best train acc, lowest train loss."""
        if metric == "val_acc":
            return self.best_val_acc
        if metric == "test_acc":
            return self.test_acc
        if metric == "train_acc":
            return self.best_train_acc
        vals = [r[metric] for r in self.history if r.get(metric) is not None]
        return min(vals) if vals else None

    def legend(self) -> str:
        """``label (best train, best val, test of best.pt)``, the study reports' style; a run
        without a val split shows ``-`` for best val (its best.pt is the last epoch)."""

        def f(v):
            return "-" if v is None else f"{v:.3f}"

        return f"{self.label} ({f(self.best_train_acc)}, {f(self.best_val_acc)}, {f(self.test_acc)})"


def read_run(path: str | Path, label: str | None = None) -> RunInfo:
    """The run folder ``path`` read back (history and summary); a RunFolderError if it is none."""
    path = Path(path)
    if not is_run(path):
        raise RunFolderError(f"{path} is not a run folder (no metrics.jsonl or summary.json)")
    return RunInfo(path, read_history(path), read_summary(path), label or path.name)


def read_summary(path: str | Path) -> Optional[dict[str, Any]]:
    """summary.json as a dict (None when absent or not a JSON object: an unfinished run); a
    field the tables use that is not a finite number is dropped with a RunFileWarning."""
    file = RunFolder(path).summary
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8", errors="replace"))
    except (json.JSONDecodeError, RecursionError):
        summary = None
    except OSError as e:
        raise RunFolderError(f"cannot read {file}: {e.strerror or e}") from None
    if not isinstance(summary, dict):
        warnings.warn(f"{file} is not a JSON object; read as an unfinished run", RunFileWarning, stacklevel=3)
        return None
    for key in ("test_acc", "best_val_acc", "wall_seconds", "best_epoch"):
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            warnings.warn(
                f"{file}: {key!r} is {v!r}, not a finite number; ignored", RunFileWarning, stacklevel=3
            )
            summary[key] = None
    return summary


def is_run(path: Path) -> bool:
    """A folder the trainer has written into (clfkit.run.run_folder.RunFolder.is_run)."""
    return RunFolder(path).is_run


def find_runs(paths: list[str | Path]) -> list[RunInfo]:
    """Runs named directly, or the run folders inside a sweep (or any folder of runs)."""
    found: list[RunInfo] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise RunFolderError(f"{p} does not exist or is not a folder")
        if is_run(p):
            found.append(read_run(p))
            continue
        children = sorted(c for c in p.iterdir() if c.is_dir() and is_run(c))
        if not children:
            raise RunFolderError(
                f"{p} is neither a run folder nor a folder of runs (no metrics.jsonl "
                f"in it or in its sub-folders)"
            )
        found += [read_run(c) for c in children]
    # the same folder name from two sweeps: tell them apart by the parent folder
    names = [r.label for r in found]
    for r in found:
        if names.count(r.label) > 1:
            r.label = f"{r.path.parent.name}/{r.label}"
    return found


def rank(runs: list[RunInfo], metric: str) -> list[RunInfo]:
    """Best first by ``metric``; runs without a value go last, in their given order."""
    if metric not in METRICS:
        raise RunFolderError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    larger = METRICS[metric]
    have = [r for r in runs if r.score(metric) is not None]
    rest = [r for r in runs if r.score(metric) is None]
    return sorted(have, key=lambda r: r.score(metric), reverse=larger) + rest


def read_samples(run: str | Path, shape: tuple[int, int, int]):
    """The exporter's parity images ``run/samples.npy`` as a uint8 (N, C, H, W) array, checked
    against the model's input ``shape`` (C, H, W); None when the run has none (an older run).
    A file that is not such an array is a RunFolderError naming it and what is wrong."""
    import numpy as np

    path = Path(run) / SAMPLES_NPY
    if not path.is_file():
        return None
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RunFolderError(
            f"{path} is not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            f"delete it to export with random images instead"
        ) from None
    want = f"uint8 images of shape (N, {shape[0]}, {shape[1]}, {shape[2]})"
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 4
        or tuple(images.shape[1:]) != tuple(shape)
        or len(images) == 0
    ):
        got = (
            f"{images.dtype} of shape {tuple(images.shape)}"
            if isinstance(images, np.ndarray)
            else type(images).__name__
        )
        raise RunFolderError(
            f"{path} holds {got}, but the model expects {want}; delete it to export "
            f"with random images instead"
        )
    return images
