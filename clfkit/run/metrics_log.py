"""Per-epoch metrics besides metrics.jsonl: ``metrics.csv`` always, and every tracker of the
run (clfkit.run.tracking: TensorBoard event files, MLflow, a tune study's pruner).

metrics.csv is rewritten from metrics.jsonl after every epoch, so it always agrees with it,
also after a resume re-runs epochs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from clfkit.util.atomic import atomic_open
from clfkit.run.run_folder import RunFolder
from clfkit.run.reader import read_history


def write_metrics_csv(run: str | Path) -> Path:
    """metrics.csv next to metrics.jsonl (same rows; columns in first-seen order)."""
    run = Path(run)
    rows = read_history(run)
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    with atomic_open(RunFolder(run).metrics_csv, "w") as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return RunFolder(run).metrics_csv


class MetricsLog:
    """Writes one epoch's row to metrics.csv, then hands it to the run's trackers (an object
    with ``epoch(row)``, e.g. clfkit.run.tracking.Trackers; the trainer closes them)."""

    def __init__(self, run: str | Path, start_epoch: int = 0, trackers: Optional[Any] = None):
        self.run = Path(run)
        self.trackers = trackers

    def write(self, row: dict[str, Any]) -> None:
        write_metrics_csv(self.run)
        if self.trackers is not None:
            self.trackers.epoch(row)

    def close(self) -> None:
        """Nothing to close: the trackers outlive the epochs (they log the summary too)."""
