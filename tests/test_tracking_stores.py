"""Trackers' stores (clfkit.run.tracking): MLflow stores in odd folders, a file named mlruns,
an http store nothing listens on, a deleted experiment, a store that fails: each refused
before any run folder exists; an edited tracking.json on resume is named.
"""

from __future__ import annotations

import socket
import time

import pytest
import yaml

from conftest import refused, tiny_recipe_file
from conftest import tiny_recipe

ODD_NAMES = ["a?b", "50%41", "n#1", "sp ace ü"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe_file(tmp_path_factory.mktemp("rt19"), train__epochs=1, data__image_size=8)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_default_mlflow_store_is_in_an_odd_working_folder(tmp_path, monkeypatch, name):
    """Run from a folder named '50%41', the default store's URL opened '50A/mlruns/mlflow.db'
    (MLflow retried for a minute, then blamed MLFLOW_TRACKING_URI, which was not set)."""
    from sqlalchemy.engine import make_url

    from clfkit.run.tracking import sqlite_path, tracking_uri

    cwd = tmp_path / name
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri()
    assert make_url(uri).database == str(cwd / "mlruns" / "mlflow.db")
    assert sqlite_path(uri) == cwd / "mlruns" / "mlflow.db"


# --------------------------------------------------------------------------- stores that cannot be used
def test_a_file_named_mlruns_in_the_working_folder_is_a_clear_error(recipe_file, tmp_path, monkeypatch):
    """A file named mlruns where the default store goes: a FileExistsError traceback."""
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlruns").write_text("notes\n")
    refused(
        ["mlruns", "MLFLOW_TRACKING_URI", "remove mlflow from train.track"],
        "train",
        recipe_file,
        "--track",
        "mlflow",
        "--out",
        tmp_path / "runs",
        "--quiet",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlruns"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_http_store_nothing_listens_on_fails_in_seconds(recipe_file, tmp_path, monkeypatch):
    """MLflow's default retries took 255 s to say that nothing listens at the URL."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    refused(
        ["cannot be used", "MLFLOW_TRACKING_URI"],
        "train",
        recipe_file,
        "--track",
        "mlflow",
        "--out",
        tmp_path / "runs",
        "--quiet",
        max_lines=None,
    )
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["tune", "--space", "optim.lr=choice(0.1,0.01)", "--sampler", "grid"],
        ["sweep", "--grid", "optim.lr=0.1,0.01"],
    ],
)
def test_tune_and_sweep_refuse_a_store_that_cannot_be_used_before_their_folder(
    recipe_file, tmp_path, monkeypatch, command
):
    """A tune or sweep tracking to a store MLflow refuses died with MLflow's traceback, after
    writing study.db or sweep.json; now it is refused as `clfkit train` refuses it."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(recipe_file))  # a plain file: MLflow's refused file store
    out = tmp_path / "study"
    refused(
        ["cannot be used", "sqlite:///", "MLFLOW_TRACKING_URI"],
        command[0],
        recipe_file,
        *command[1:],
        "--set",
        "train.track=[mlflow]",
        "--out",
        out,
        max_lines=None,
    )
    assert not out.exists()


def test_a_deleted_experiment_is_refused_before_the_run_folder(
    recipe_file, tmp_path, monkeypatch, mlflow_store
):
    """The experiment deleted in MLflow (to clean up, say): every tracked run died with
    MLflow's 'must be in the active state' traceback, leaving a half-made run folder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    client.delete_experiment(
        client.create_experiment("rt19-deleted", artifact_location=(tmp_path / "a").as_uri())
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rt19-deleted")
    refused(
        ["'rt19-deleted'", "was deleted", "restore_experiment", "MLFLOW_EXPERIMENT_NAME"],
        "train",
        recipe_file,
        "--track",
        "mlflow",
        "--out",
        tmp_path / "runs",
        "--quiet",
        max_lines=None,
    )
    assert not (tmp_path / "runs").exists()


def _recipe_file(tmp_path, **changes):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**changes).to_dict()))
    return path


# --------------------------------------------------------------------------- MLflow tracking
@pytest.mark.parametrize("record", ['{"mlflow_run_id": "deadbeef"}', "{", '{"other": 1}'])
def test_resume_with_an_edited_tracking_json_names_the_file(tmp_path, monkeypatch, mlflow_store, record):
    # before: a KeyError / JSONDecodeError / MlflowException traceback on --resume
    from clfkit.run.tracking import TRACKING_FILE, MLflowTracker, TrackingError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    (tmp_path / TRACKING_FILE).write_text(record)
    with pytest.raises(TrackingError, match="cannot continue the MLflow run recorded in .*tracking.json"):
        MLflowTracker.open(tmp_path, {}, resuming=True)
    assert (tmp_path / TRACKING_FILE).read_text() == record


def test_a_tracking_store_that_fails_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    # before: MLFLOW_TRACKING_URI=file:///... (MLflow's retired file store; MlflowException on
    # the first call) was a traceback from inside MLflow, after the run folder was made.
    # The store's failure is simulated: MLflow's own takes seconds to import and raise.
    from clfkit.run import mlflow_tracking

    def store_down():
        raise RuntimeError("The filesystem tracking backend is in maintenance mode")

    monkeypatch.setattr(mlflow_tracking, "_client_and_experiment", store_down)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    refused(
        [
            "train.track",
            "mlflow",
            "tracking store",
            str(tmp_path / "mlruns"),
            "maintenance mode",
            "MLFLOW_TRACKING_URI",
        ],
        "train",
        _recipe_file(tmp_path),
        "--track",
        "mlflow",
        "--out",
        tmp_path / "runs",
        "--quiet",
    )
    assert not (tmp_path / "runs").exists()
