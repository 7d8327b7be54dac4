"""The run folder: every file name of a run, how a new one is created, when it counts as
finished, and its lock. Every module that reads or writes a run goes through :class:`RunFolder`
(or the file-name constants below), so a file name is spelled once.

Run folder::

    runs/<name>/
      recipe.yaml      the resolved recipe (every default filled in)
      metrics.jsonl    one JSON line per epoch (metrics.csv: the same rows; tensorboard/: event
                       files when tensorboard is installed)
      best.pt last.pt  checkpoints (weights + recipe + class names + input spec)
      summary.json     best_val_acc, best_epoch, test_acc, per-class test accuracy, ...; written
                       last: a run is finished when it exists
      weights.json     what init: / model.weights loaded, re-initialized and found unexpected (when
                       the run started from weights)
      data_files.json  a folder dataset's files with size, modification time and content hash at
                       the start (so a resume refused for changed data can say what changed, and
                       eval can tell the run's data from other data: clfkit.run.data_record)
      samples.npy      a few real images for the exporter's parity check
      skipped.txt      images that could not be decoded (when any)
      curves.png       loss and accuracy per epoch, train vs val (clfkit.run.per_class)
      per_class.csv    accuracy, precision, recall, f1, support per class on the test split
      confusion.png    row-normalized confusion matrix (val split when there is no labelled test)
      eval_<split>.json  ``clfkit eval``'s result
      calibration.json, reliability.png  ECE and reliability bins of val and test (clfkit.run.calibration)
      cam.json         Grad-CAM overlays of mistakes and correct images (clfkit.run.gradcam)
      reports_source.json  which checkpoint, split and data per_class.csv, confusion.png and
                       mistakes.json were computed on (training, or the last ``clfkit eval``)

One writer per run folder: an exclusive lock that every command writing into a run folder
(``train``, ``train --resume``, ``eval``) takes first, before it reads or removes anything.
The lock is ``fcntl.flock`` on ``RUN/.clfkit.lock``. The kernel releases it when the holding
process ends, however it ends (``kill -9`` included), so a crash never leaves a stale lock. The
file holds the holder's pid, host, start time and command, for the error the next process gets.
A clean release deletes the file (while still holding the lock); an acquirer that locked a file
which was deleted meanwhile sees that its inode is no longer the path's and tries again.

Under torchrun only rank 0 writes the run folder (the others use private folders), so only
rank 0 (``RANK`` unset or 0) takes the lock. A process may take the same run's lock again
while it holds it (``train --resume`` locks, then the trainer it calls locks again).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from clfkit.errors import RunFolderError, RunLockedError, RunLockWarning, TrainingError
from clfkit.util.atomic import WriteError, append_line, atomic_open, write_json, write_text
from clfkit.util.safe_names import check_name
from clfkit.util.output_file import is_run_folder

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

# every file name of a run folder
RECIPE_YAML = "recipe.yaml"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
SUMMARY_JSON = "summary.json"
BEST_PT = "best.pt"
LAST_PT = "last.pt"
SAMPLES_NPY = "samples.npy"
SKIPPED_TXT = "skipped.txt"
CURVES_PNG = "curves.png"
PER_CLASS_CSV = "per_class.csv"
CONFUSION_PNG = "confusion.png"
MISTAKES_JSON = "mistakes.json"
CALIBRATION_JSON = "calibration.json"  # ECE and reliability bins (clfkit.run.calibration)
RELIABILITY_PNG = "reliability.png"
CAM_JSON = "cam.json"  # Grad-CAM overlays (clfkit.run.gradcam)
REPORT_HTML = "report.html"
WEIGHTS_JSON = "weights.json"
DATA_FILES_JSON = "data_files.json"
REPORTS_SOURCE_JSON = "reports_source.json"
LOCK_NAME = ".clfkit.lock"
_HELD: dict[str, list] = {}  # resolved run folder -> [fd, depth]: locks this process holds
F = TypeVar("F", bound=Callable[..., Any])


def _holder_text(lock_path: Path) -> str:
    """What the lock file says about its holder (it may be mid-write: retry briefly)."""
    for _ in range(10):
        try:
            info = json.loads(lock_path.read_text(encoding="utf-8"))
            if isinstance(info, dict) and info.get("pid"):
                return (
                    f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('started', '?')}, "
                    f"running `{info.get('command', '?')}`"
                )
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return "a process whose details could not be read"


def _locked_message(run: Path, lock_path: Path, purpose: str) -> str:
    return (
        f"cannot {purpose} {run}: another clfkit process is writing into this run folder "
        f"({_holder_text(lock_path)}). Two writers would duplicate metrics and overwrite each other's "
        f"checkpoints. Wait for it to finish, or stop it (Ctrl-C saves last.pt) and then resume with "
        f"`clfkit train --resume {run}`. The lock ({lock_path}) goes away by itself when that process "
        f"ends, even if it is killed"
    )


def _acquire(run: Path, purpose: str) -> int:
    """Open and flock ``run/LOCK_NAME``; returns the fd. Raises RunLockedError when held."""
    lock_path = run / LOCK_NAME
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WriteError(
                f"cannot {purpose} {run}: cannot create its lock file {lock_path}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(_locked_message(run, lock_path, purpose)) from None
        except OSError as e:  # a filesystem without locks (some network mounts)
            warnings.warn(
                f"cannot lock {run} ({e.strerror or e}): nothing stops a second clfkit process from "
                f"writing into it at the same time",
                RunLockWarning,
                stacklevel=4,
            )
            return fd
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder deleted on release: lock the new one


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(
            [
                "clfkit" if i == 0 and a.endswith(("clfkit", "__main__.py")) else a
                for i, a in enumerate(sys.argv)
            ]
        ),
    }
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def run_lock(run: str | os.PathLike, purpose: str = "write into") -> Iterator[None]:
    """Hold the exclusive lock of run folder ``run`` (which must exist) for the block.
    ``purpose`` completes "cannot ... RUN" in the error another process gets."""
    run = Path(run)
    if fcntl is None or os.environ.get("RANK", "0") not in ("", "0"):
        yield
        return
    if not run.is_dir():
        what = "it is a file, not a run folder" if run.exists() else "no such run folder"
        raise RunFolderError(f"cannot {purpose} {run}: {what}")
    key = os.path.realpath(run)
    if key in _HELD:  # this process holds it already
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(run, purpose)
    _HELD[key] = [fd, 1]
    try:
        _write_holder(fd)
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(run / LOCK_NAME)  # while still locked: see the module docstring
        os.close(fd)


def holds_run_lock(purpose: str) -> Callable[[F], F]:
    """Decorator: the function's first argument (or ``run_dir=``) is a run folder, locked for
    the whole call."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with run_lock(args[0] if args else kwargs["run_dir"], purpose):
                return fn(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap


# --------------------------------------------------------------------------- the folder
class RunFolder:
    """One run folder: the path of each of its files, "finished", the lock and the writes
    the trainer makes (each atomic, see clfkit.util.atomic)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    recipe = property(lambda self: self.path / RECIPE_YAML)
    metrics = property(lambda self: self.path / METRICS_JSONL)
    metrics_csv = property(lambda self: self.path / METRICS_CSV)
    tensorboard = property(lambda self: self.path / TENSORBOARD_DIR)
    summary = property(lambda self: self.path / SUMMARY_JSON)
    best = property(lambda self: self.path / BEST_PT)
    last = property(lambda self: self.path / LAST_PT)
    samples = property(lambda self: self.path / SAMPLES_NPY)
    skipped = property(lambda self: self.path / SKIPPED_TXT)
    curves = property(lambda self: self.path / CURVES_PNG)
    per_class = property(lambda self: self.path / PER_CLASS_CSV)
    confusion = property(lambda self: self.path / CONFUSION_PNG)
    mistakes = property(lambda self: self.path / MISTAKES_JSON)
    report_html = property(lambda self: self.path / REPORT_HTML)
    weights = property(lambda self: self.path / WEIGHTS_JSON)
    data_files = property(lambda self: self.path / DATA_FILES_JSON)
    reports_source = property(lambda self: self.path / REPORTS_SOURCE_JSON)

    def eval_json(self, split: str, tta: str = "none") -> Path:
        """``clfkit eval``'s result for ``split`` (with test-time augmentation ``tta``)."""
        return self.path / (f"eval_{split}.json" if tta == "none" else f"eval_{split}_tta-{tta}.json")

    @property
    def finished(self) -> bool:
        """The one definition: the trainer writes summary.json last, after the test evaluation."""
        return self.summary.is_file()

    @property
    def is_run(self) -> bool:
        """A folder the trainer has written into (at least one epoch, or a summary)."""
        return is_run_folder(self.path)  # one rule, shared with the -o checks of predict and compare

    def lock(self, purpose: str = "write into"):
        """:func:`run_lock` on this folder."""
        return run_lock(self.path, purpose)

    @classmethod
    def create(cls, out: str | os.PathLike, name: str) -> "RunFolder":
        """``out/name``, or ``out/name-2``, ``-3``... if taken: never overwrite a run. ``name``
        follows clfkit.util.safe_names' rule, so the folder is never outside ``out``."""
        check_name(name, "run name")
        out = Path(out)
        for i in range(1, 10000):
            path = out / (name if i == 1 else f"{name}-{i}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise WriteError(f"cannot create run folder {path}: {e.strerror or e}") from None
        raise TrainingError(f"too many runs named {name} under {out}")

    # ---- the trainer's writes
    def write_recipe(self, yaml_text: str, version: str) -> None:
        write_text(self.recipe, f"# resolved by clfkit {version}\n" + yaml_text)

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        write_text(self.skipped, "".join(f"{p}\t{why}\n" for p, why in skipped))

    def write_summary(self, summary: dict) -> None:
        """summary.json, written last: from now on the run counts as finished."""
        write_json(self.summary, summary)

    def write_weights(self, receipts: list[dict]) -> None:
        """weights.json: the full receipts of the weights the run started from."""
        write_json(self.weights, {"receipts": receipts})

    def write_data_files(self, manifest: dict) -> None:
        """data_files.json: the data's files as the run started on them (clfkit.run.data_record)."""
        write_json(self.data_files, manifest)

    def append_metrics(self, row: dict) -> None:
        append_line(self.metrics, json.dumps(row))

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """metrics.jsonl as exactly ``rows`` (a resume drops lines written after its last.pt)."""
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def write_samples(self, images) -> None:
        """The exporter's parity images: a uint8 (N, C, H, W) numpy array (.npy: no pickle)."""
        import numpy as np

        with atomic_open(self.samples, "wb") as f:
            np.save(f, images, allow_pickle=False)
