"""Experiment trackers: where a run's numbers go besides its run folder.

A tracker is any object with three methods, called by the trainer (through
clfkit.run.metrics_log.MetricsLog for the epochs)::

    epoch(row)              after each epoch, with the row written to metrics.jsonl
    finish(run, summary)    once, after summary.json and the report files are written
    close()                 always, at the end of the run (also after an error or a stop)

Built in, chosen by the recipe's ``train.track`` (or ``clfkit train --track``):

- ``tensorboard``: event files in ``run/tensorboard/`` when the ``tensorboard`` extra is
  installed (silently off otherwise, as before trackers were a recipe field).
- ``mlflow`` (clfkit.run.mlflow_tracking): one MLflow run per clfkit run (``pip install -e ".[mlflow]"``): the flattened
  recipe as params, each epoch's metrics with step = epoch, the summary's numbers as metrics,
  summary.json and the report files as artifacts. The store is ``MLFLOW_TRACKING_URI``, or
  ``mlruns/`` in the working folder (an SQLite database plus an artifact folder: MLflow's file
  store is in maintenance mode). A sweep or tune sets ``CLFKIT_MLFLOW_PARENT`` (see
  :func:`parent_run`) and its runs become that run's children.

After the run, ``clfkit export`` logs the ONNX file it wrote into the same MLflow run
(:func:`log_export`, by the id the run folder's ``tracking.json`` records).

Anything with ``epoch`` (and optionally ``finish``/``close``) can be passed to
``clfkit.train.trainer.train(..., trackers=[...])``; ``clfkit tune`` feeds its pruner this way.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

from clfkit.errors import TrackingError, TrackingWarning  # noqa: F401 - importable from here too
from clfkit.run.mlflow_tracking import (  # noqa: F401 - the mlflow tracker's names, importable from here
    ARTIFACTS,
    DEFAULT_EXPERIMENT,
    EXPERIMENT_ENV,
    EXPORT_ARTIFACTS,
    PARENT_ENV,
    TRACKING_FILE,
    MLflowTracker,
    _numbers,
    checked_store,
    flatten,
    log_export,
    parent_run,
    sqlite_path,
    sqlite_url,
    tracking_uri,
)
from clfkit.run.run_folder import RunFolder

TRACKERS = ("tensorboard", "mlflow")


class Tracker(Protocol):
    def epoch(self, row: dict[str, Any]) -> None: ...


# --------------------------------------------------------------------------- TensorBoard
def _tag(key: str) -> str:
    """train_loss -> loss/train, val_acc -> acc/val: TensorBoard then overlays train and val."""
    for split in ("train", "val", "test"):
        if key.startswith(split + "_"):
            return f"{key[len(split) + 1 :]}/{split}"
    return f"run/{key}"


class TensorBoardTracker:
    """Event files in ``run/tensorboard``; None from :meth:`open` without tensorboard."""

    def __init__(self, writer: Any):
        self.writer: Optional[Any] = writer  # None once writing failed: the run goes on without it

    @classmethod
    def open(cls, run: Path, start_epoch: int) -> Optional["TensorBoardTracker"]:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra is not installed: CSV and JSONL only
            return None
        # purge_step drops events a resumed run is about to write again
        return cls(
            SummaryWriter(
                log_dir=str(RunFolder(run).tensorboard), purge_step=start_epoch + 1 if start_epoch else None
            )
        )

    def epoch(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        try:
            for key, value in _numbers(row).items():
                self.writer.add_scalar(_tag(key), value, int(row["epoch"]))
            self.writer.flush()
        except OSError as e:  # a full disk must not end the run: the event files are a copy
            warnings.warn(
                f"TensorBoard: writing {self.writer.log_dir} failed at epoch {row['epoch']} "
                f"({e.strerror or e}); training goes on without TensorBoard, and metrics.jsonl "
                f"has every epoch",
                TrackingWarning,
                stacklevel=2,
            )
            self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()


# --------------------------------------------------------------------------- the run's trackers
class Trackers:
    """The trackers of one run, called in order."""

    def __init__(self, trackers: Sequence[Any]):
        self.trackers = list(trackers)

    def epoch(self, row: dict[str, Any]) -> None:
        for t in self.trackers:
            t.epoch(row)

    def finish(self, run: Path, summary: dict[str, Any]) -> None:
        for t in self.trackers:
            if hasattr(t, "finish"):
                t.finish(run, summary)

    def close(self) -> None:
        for t in self.trackers:
            if hasattr(t, "close"):
                t.close()


def require_trackers(names: Sequence[str]) -> None:
    """Fail before the run folder exists when a tracker's package is missing or its store fails."""
    if "mlflow" in names:
        checked_store()  # the package, and a store that works, before the run folder exists


def open_trackers(
    names: Sequence[str],
    run: Path,
    recipe: dict[str, Any],
    start_epoch: int,
    extra: Sequence[Any] = (),
    main: bool = True,
) -> Trackers:
    """The trackers ``names`` (the recipe's train.track) for run folder ``run``, then ``extra``.
    Only the main process of a multi-process run reports to MLflow."""
    found: list[Any] = []
    if "tensorboard" in names:
        tb = TensorBoardTracker.open(run, start_epoch)
        if tb is not None:
            found.append(tb)
    if "mlflow" in names and main:
        found.append(MLflowTracker.open(run, recipe, resuming=start_epoch > 0))
    return Trackers(found + list(extra))
