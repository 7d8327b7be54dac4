"""Reading finished (or unfinished) run folders back: the per-epoch history, the summary and
the numbers the studies quote, "(best train, best val, test at best val)".

Used by ``clfkit compare``, the sweep tables and ``clfkit eval``; it only reads files the
trainer wrote (metrics.jsonl, summary.json), so it works on runs from any clfkit version that
wrote those.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clfkit.errors import ClfkitError
from clfkit.io import atomic_open


class RunFolderError(ClfkitError):
    """A path that is not a run folder (or a folder of runs)."""


# metric -> True when larger is better; what ``--metric`` may sort by
METRICS = {"val_acc": True, "val_loss": False, "test_acc": True, "train_acc": True, "train_loss": False}


def read_history(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as a list of rows; a torn last line (a crash mid-write) is ignored, and a
    resumed run's re-written epochs keep only their latest row."""
    path = Path(run) / "metrics.jsonl"
    rows: dict[int, dict] = {}
    if not path.is_file():
        return []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows[int(row["epoch"])] = row
    return [rows[e] for e in sorted(rows)]


@dataclass
class RunInfo:
    """One run folder, read back."""

    path: Path
    history: list[dict[str, Any]]
    summary: Optional[dict[str, Any]]
    label: str = ""

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def best_row(self) -> Optional[dict[str, Any]]:
        """The epoch the trainer kept as best.pt: first epoch with the highest val acc (train
        acc when there is no val split), exactly as the trainer chooses it."""
        if self.summary and self.summary.get("best_epoch"):
            for row in self.history:
                if row["epoch"] == self.summary["best_epoch"]:
                    return row
        best = None
        for row in self.history:
            score = row.get("val_acc", row.get("train_acc", -1.0))
            if best is None or score > best.get("val_acc", best.get("train_acc", -1.0)):
                best = row
        return best

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
        """``label (best train, best val, test at best val)``, the study reports' style."""
        def f(v):
            return "-" if v is None else f"{v:.3f}"
        return f"{self.label} ({f(self.best_train_acc)}, {f(self.best_val_acc)}, {f(self.test_acc)})"


def read_run(path: str | Path, label: str | None = None) -> RunInfo:
    path = Path(path)
    if not is_run(path):
        raise RunFolderError(f"{path} is not a run folder (no metrics.jsonl or summary.json)")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            summary = None
    return RunInfo(path, read_history(path), summary, label or path.name)


def is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()


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
            raise RunFolderError(f"{p} is neither a run folder nor a folder of runs (no metrics.jsonl "
                                 f"in it or in its sub-folders)")
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


def write_metrics_csv(run: str | Path) -> Path:
    """metrics.csv next to metrics.jsonl (same rows; columns in first-seen order)."""
    run = Path(run)
    rows = read_history(run)
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    with atomic_open(run / "metrics.csv", "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return run / "metrics.csv"
