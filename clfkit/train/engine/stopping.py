"""Early stopping (``train.early_stopping``): patience on one validation metric."""

from __future__ import annotations

import math
from typing import Any

from clfkit.errors import TrainingError


class EarlyStopper:
    """Counts epochs without improvement of ``metric`` (train.early_stopping); ``update`` says when to stop.

    Accuracy improves upwards, loss downwards; an improvement must beat the best value so far
    by more than ``min_delta``. Its state (best value, epochs waited) goes into ``last.pt``.
    """

    def __init__(self, *, metric: str, patience: int, min_delta: float, has_val: bool):
        if not has_val:
            raise TrainingError(
                f"train.early_stopping watches {metric}, but this run has no validation "
                f"split; set data.val_fraction > 0 or drop train.early_stopping"
            )
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.sign = 1.0 if metric.endswith("acc") else -1.0
        self.best = -math.inf  # sign * metric: larger is better
        self.best_epoch = 0
        self.waited = 0
        self.stopped_epoch = 0

    def update(self, row: dict[str, Any]) -> bool:
        """Record one epoch's metrics row; True when training should stop after it."""
        value = self.sign * float(row[self.metric])
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.waited = value, int(row["epoch"]), 0
        else:
            self.waited += 1
        if self.waited >= self.patience:
            self.stopped_epoch = int(row["epoch"])
            return True
        return False

    def describe(self) -> str:
        return (
            f"early stop after epoch {self.stopped_epoch}: {self.metric} has not improved for "
            f"{self.waited} epoch(s) (best {self.sign * self.best:.4f} at epoch {self.best_epoch})"
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "stopped_epoch": self.stopped_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.waited = int(state["waited"])
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
