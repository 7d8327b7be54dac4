"""Per-epoch metrics besides metrics.jsonl: ``metrics.csv`` always, TensorBoard event files
(``tensorboard/``) when the ``tensorboard`` extra is installed (``pip install clfkit[tensorboard]``).

metrics.csv is rewritten from metrics.jsonl after every epoch, so it always agrees with it,
also after a resume re-runs epochs.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from clfkit.io import atomic_open
from clfkit.run.folder import RunFolder
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


def _tag(key: str) -> str:
    """train_loss -> loss/train, val_acc -> acc/val: TensorBoard then overlays train and val."""
    for split in ("train", "val", "test"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1:]}/{split}"
    return f"run/{key}"


class MetricsLog:
    """Writes one epoch's row to metrics.csv and, if available, TensorBoard."""

    def __init__(self, run: str | Path, start_epoch: int = 0):
        self.run = Path(run)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is not installed: CSV and JSONL only
            return
        # purge_step drops events a resumed run is about to write again
        self.tb = SummaryWriter(log_dir=str(RunFolder(self.run).tensorboard),
                                purge_step=start_epoch + 1 if start_epoch else None)

    def write(self, row: dict[str, Any]) -> None:
        write_metrics_csv(self.run)
        if self.tb is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(_tag(key), value, int(row["epoch"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
