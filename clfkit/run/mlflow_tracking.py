"""The ``mlflow`` tracker (clfkit.run.tracking): one MLflow run per clfkit run, its store
(``MLFLOW_TRACKING_URI``, or ``mlruns/`` in the working folder: an SQLite database plus an
artifact folder) checked before the run folder exists, the parent run of a sweep or study
(:func:`parent_run`), and after the run the export logged into the run that trained it
(:func:`log_export`, by the id the run folder's ``tracking.json`` records)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import quote, unquote

from clfkit.errors import TrackingError, TrackingWarning

PARENT_ENV = "CLFKIT_MLFLOW_PARENT"  # run id of the sweep's / study's MLflow run
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "clfkit"
TRACKING_FILE = "tracking.json"  # the MLflow run id, so a resumed run logs into the same run
# the report files a finished run hands to MLflow as artifacts (those that exist)
ARTIFACTS = (
    "summary.json",
    "recipe.yaml",
    "curves.png",
    "confusion.png",
    "per_class.csv",
    "report.html",
    "mistakes.json",
)


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"
    }


# --------------------------------------------------------------------------- MLflow
def _require_mlflow() -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError(
            "train.track asks for mlflow, but MLflow is not installed here: "
            'pip install -e ".[mlflow]" (or pip install mlflow-skinny sqlalchemy alembic), '
            "or remove mlflow from train.track"
        ) from None
    return MlflowClient


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of the SQLite file ``path`` (MLflow's store, a tune's study.db). The
    path is percent-encoded: SQLAlchemy decodes it, and reads ``?`` as the start of options, so
    a folder named ``a?b``, ``50%`` or ``#1`` would otherwise open another file, or none."""
    return "sqlite:///" + quote(str(Path(path).resolve()), safe="/")


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of an ``sqlite:///`` URL (:func:`sqlite_url`'s or a user's), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else an SQLite store in ``./mlruns``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = Path.cwd() / "mlruns"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:  # a file named mlruns, a read-only working folder
        raise TrackingError(
            f"train.track: mlflow: cannot use {folder} as the MLflow store ({e.strerror}); "
            f"run from a writable folder without a file named mlruns, set MLFLOW_TRACKING_URI "
            f"(e.g. sqlite:///PATH/mlflow.db), or remove mlflow from train.track"
        ) from None
    return sqlite_url(folder / "mlflow.db")


def _client_and_experiment() -> tuple[Any, str]:
    client = _require_mlflow()(tracking_uri())
    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if (
        exp is not None and exp.lifecycle_stage == "deleted"
    ):  # MLflow refuses runs in it, and a new one of that name
        raise TrackingError(
            f"train.track: mlflow: the experiment {name!r} (id {exp.experiment_id}) was deleted "
            f"from the store {tracking_uri()}; restore it (MlflowClient().restore_experiment"
            f"({exp.experiment_id!r})), or set {EXPERIMENT_ENV} to another name"
        )
    if exp is not None:
        return client, exp.experiment_id
    artifacts = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # the local store keeps artifacts next to its database
        artifacts = (Path.cwd() / "mlruns" / "artifacts").as_uri()
    try:
        return client, client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # another process created it first
        return client, client.get_experiment_by_name(name).experiment_id


# an HTTP store that is gone should cost seconds, not MLflow's default minutes of retries
# (about 4 minutes against a port nothing listens on); a user's own settings win
_QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP requests give up quickly inside the block (checks, not a run's logging)."""
    quick = {k: v for k, v in _QUICK_HTTP.items() if k not in os.environ}
    os.environ.update(quick)
    try:
        yield
    finally:
        for k in quick:
            os.environ.pop(k, None)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def checked_store() -> tuple[Any, str]:
    """The MLflow client and experiment id, or a TrackingError naming the store that cannot
    be used (a file store MLflow refuses, a server that does not answer, a damaged database)."""
    try:
        with _quick_http():  # a server that is not there: an error in seconds, not minutes
            return _client_and_experiment()
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for one cause: the store
        uri = tracking_uri()
        hint = (
            " (a folder or file: URI is MLflow's file store, which MLflow refuses now; give "
            "sqlite:///PATH/mlflow.db)"
            if "://" not in uri or uri.startswith("file:")
            else ""
        )
        raise TrackingError(
            f"train.track: mlflow: the tracking store {uri} cannot be used{hint} "
            f"({_first_line(e)}); fix MLFLOW_TRACKING_URI or remove mlflow from train.track"
        ) from None


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A recipe as dotted-path params: ``{"optim.lr": "0.01", "data.augment.0.name": ...}``."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix: str(data)[:500]}
    flat: dict[str, str] = {}
    for key, child in items:
        flat.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class MLflowTracker:
    """One MLflow run for one clfkit run, written through MlflowClient (explicit run ids, no
    process-global active run: sweeps in worker processes and tune trials stay apart)."""

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id, self.finished = client, run_id, False
        self.params: dict[str, str] = {}  # the recipe's, until logged
        self.pending: list[tuple[dict[str, float], int]] = []  # epochs not logged yet (store failing)
        self.failing = False

    @classmethod
    def open(cls, run: Path, recipe: dict[str, Any], resuming: bool) -> "MLflowTracker":
        """Start (or, resuming, continue) the MLflow run of run folder ``run``."""
        client, experiment = checked_store()
        saved = run / TRACKING_FILE
        if resuming and saved.is_file():
            try:
                run_id = str(json.loads(saved.read_text(encoding="utf-8"))["mlflow_run_id"])
                client.update_run(run_id, status="RUNNING")
            except Exception as e:  # noqa: BLE001 - an edited tracking.json, a run deleted from the store
                raise TrackingError(
                    f"train.track: mlflow: cannot continue the MLflow run recorded in {saved} "
                    f"({_first_line(e)}); restore that file (or the run in the store), or "
                    f"delete the file to log the rest of the run as a new MLflow run"
                ) from None
            return cls(client, run_id)
        tags = {"clfkit.run_dir": str(run.resolve())}
        if os.environ.get(PARENT_ENV):
            tags["mlflow.parentRunId"] = os.environ[PARENT_ENV]
        mlrun = client.create_run(experiment, run_name=run.name, tags=tags)
        from clfkit.util.atomic import write_json

        write_json(saved, {"mlflow_run_id": mlrun.info.run_id, "tracking_uri": tracking_uri()})
        tracker = cls(client, mlrun.info.run_id)
        tracker.params = flatten(recipe)
        tracker._guarded("the recipe's params", tracker._flush)
        return tracker

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_numbers(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers.items()])

    # A store that fails during the run (a server restarting, a locked SQLite file, a full
    # disk) must not end days of training: the run folder is the record, MLflow a copy. Each
    # failure is one warning line; the epochs not logged are sent with the next epoch that
    # gets through; requests give up in seconds, so an unreachable server costs each epoch
    # seconds, not MLflow's minutes of retries.
    def epoch(self, row: dict[str, Any]) -> None:
        self.pending.append((_numbers(row), int(row["epoch"])))
        self._guarded(f"epoch {row['epoch']}", self._flush)

    def _flush(self) -> None:
        if self.params:
            self.log_params(self.params)
            self.params = {}
        while self.pending:
            self.log_numbers(*self.pending[0])
            self.pending.pop(0)

    def _guarded(self, what: str, action: Callable[[], None]) -> bool:
        try:
            with _quick_http():
                action()
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds for one cause: the store
            if not self.failing:
                warnings.warn(
                    f"MLflow: logging {what} to {getattr(self.client, 'tracking_uri', 'the store')} failed ({_first_line(e)}); training "
                    f"goes on and the run folder keeps everything; clfkit tries again after each epoch",
                    TrackingWarning,
                    stacklevel=2,
                )
            self.failing = True
            return False
        if self.failing:
            warnings.warn(
                f"MLflow: logging works again at {what}; the epochs it missed were sent",
                TrackingWarning,
                stacklevel=2,
            )
        self.failing = False
        return True

    def finish(self, run: Path, summary: dict[str, Any]) -> None:
        def send() -> None:
            self._flush()
            numbers = {k: v for k, v in _numbers(summary).items() if k not in ("num_classes",)}
            self.log_numbers(numbers, int(summary.get("epochs_run") or 0))
            for name in ARTIFACTS:
                if (run / name).is_file():
                    self.client.log_artifact(self.run_id, str(run / name))
            self.client.set_terminated(self.run_id, "FINISHED")

        self.failing = False  # the end of the run: say it again if it still fails
        self.finished = self._guarded("the summary and report files", send)
        if not self.finished:
            warnings.warn(
                f"MLflow run {self.run_id} is incomplete (the run folder {run} is complete)",
                TrackingWarning,
                stacklevel=2,
            )

    def close(self) -> None:
        if not self.finished:  # an error, a stop signal, a pruned trial, or a store that failed
            self.failing = False
            self._guarded("the run's end", lambda: self.client.set_terminated(self.run_id, "KILLED"))
            self.finished = True


@contextlib.contextmanager
def parent_run(name: str, params: dict[str, str], folder: Path, enabled: bool) -> Iterator[Optional[str]]:
    """An MLflow run for a sweep or a study while the block runs; its id is put in the
    environment (inherited by worker processes), so the runs trained inside become its
    children. Does nothing (yields None) unless ``enabled``."""
    if not enabled:
        yield None
        return
    client, experiment = checked_store()
    run_id = _continued_parent(client, Path(folder))
    if run_id is None:
        mlrun = client.create_run(
            experiment, run_name=name, tags={"clfkit.folder": str(Path(folder).resolve())}
        )
        run_id = mlrun.info.run_id
        from clfkit.util.atomic import write_json

        write_json(Path(folder) / TRACKING_FILE, {"mlflow_run_id": run_id, "tracking_uri": tracking_uri()})
        MLflowTracker(client, run_id).log_params(
            params
        )  # a continued run keeps its first params (MLflow's are fixed)
    parent = MLflowTracker(client, run_id)
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = run_id
    try:
        yield run_id
        for file in (
            "report.html",
            "sweep.md",
            "sweep.csv",
            "compare.png",
            "trials.md",
            "trials.csv",
            "best.yaml",
            "history.png",
            "importance.png",
        ):
            if (Path(folder) / file).is_file():
                client.log_artifact(run_id, str(Path(folder) / file))
        client.set_terminated(run_id, "FINISHED")
        parent.finished = True
    finally:
        parent.close()
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before


def _continued_parent(client: Any, folder: Path) -> Optional[str]:
    """The MLflow run a sweep or study in ``folder`` began with, set running again, when its
    tracking.json names one in this store (a continued study is one run, its children all
    under it); None: start a new one (a first run, another store, a run deleted from it)."""
    try:
        saved = json.loads((folder / TRACKING_FILE).read_text(encoding="utf-8"))
        if saved.get("tracking_uri") != tracking_uri():
            return None
        run_id = str(saved["mlflow_run_id"])
        if client.get_run(run_id).info.lifecycle_stage != "active":
            return None
        client.update_run(run_id, status="RUNNING")
        return run_id
    except Exception:  # noqa: BLE001 - no file, an edited one, a run not in the store: a new parent run
        return None


# --------------------------------------------------------------------------- after the run
EXPORT_ARTIFACTS = "exported"  # the MLflow artifact folder that receives `clfkit export`'s files


def _local_store_missing(uri: str) -> Optional[str]:
    """The path of a local store (SQLite file, file store folder) that no longer exists:
    opening it would silently create an empty one."""
    if uri.startswith("sqlite:///"):
        path = sqlite_path(uri)
    elif uri.startswith("file:"):
        from urllib.parse import urlparse

        path = Path(unquote(urlparse(uri).path))
    elif "://" not in uri:
        path = Path(uri)
    else:
        return None  # a server: asked below
    return None if path.exists() else str(path)


def log_export(run: str | Path, files: Sequence[str | Path]) -> tuple[Optional[str], Optional[str]]:
    """Log ``files`` (an export of run folder ``run``) as artifacts of the MLflow run that
    trained it, reopened by the id in ``run/tracking.json``, under ``exported/``. Returns
    (MLflow run id, None) when logged, (None, None) for a run trained without MLflow, and
    (None, why) when it could not be logged (mlflow not installed, the store or the run gone):
    the export stands either way, so this never raises."""
    saved = Path(run) / TRACKING_FILE
    if not saved.is_file():
        return None, None
    try:
        record = json.loads(saved.read_text(encoding="utf-8"))
        run_id, uri = str(record["mlflow_run_id"]), str(record["tracking_uri"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{saved} cannot be read ({type(e).__name__}); the export was not logged to MLflow"
    why = f"the export was not logged to MLflow run {run_id}"
    try:
        MlflowClient = _require_mlflow()
    except TrackingError:
        return None, f'{why}: mlflow is not installed here (pip install -e ".[mlflow]")'
    missing = _local_store_missing(uri)
    if missing:
        return None, f"{why}: its store {missing} no longer exists"
    try:
        with _quick_http():
            client = MlflowClient(uri)
            client.get_run(run_id)  # a run deleted from the store fails here, before any upload
            for file in files:
                client.log_artifact(run_id, str(file), artifact_path=EXPORT_ARTIFACTS)
    except Exception as e:  # noqa: BLE001 - any store failure: the export itself succeeded
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return None, f"{why} ({uri}): {type(e).__name__}: {first}"
    return run_id, None
