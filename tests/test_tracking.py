"""MLflow tracking against a real local store, read back through the MLflow API."""

from __future__ import annotations

import sys

import pytest

from conftest import new_experiment, tiny_recipe


def _small(**changes):
    small = {
        "train__epochs": 2,
        "train__track": ["mlflow"],
        "data__source": {
            "name": "shapes",
            "num_classes": 4,
            "train_size": 96,
            "val_size": 32,
            "test_size": 32,
        },
    }
    return tiny_recipe(**{**small, **changes})


def test_missing_mlflow_is_a_clear_error_before_the_run_folder(tmp_path, monkeypatch):
    from clfkit.run.tracking import TrackingError
    from clfkit.train.trainer import train

    monkeypatch.chdir(tmp_path)  # were mlflow importable after all, its default store goes here
    # import mlflow (and any of its modules an earlier test imported) now raises ImportError
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TrackingError, match=r'pip install -e "\.\[mlflow\]"'):
        train(_small(), tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


def test_unknown_tracker_is_a_recipe_error():
    from clfkit.errors import RecipeError

    with pytest.raises(RecipeError, match="train.track"):
        tiny_recipe(train__track=["wandb"])


@pytest.fixture()
def store(mlflow_store, tmp_path, monkeypatch, request):
    """The session's MLflow store, with this test's own experiment (MLFLOW_EXPERIMENT_NAME)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"clfkit-test-{request.node.name}")
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_store)


def _experiment(store, tmp_path) -> str:
    """This test's experiment (named by the store fixture), its artifacts in tmp_path."""
    import os

    return new_experiment(store, os.environ["MLFLOW_EXPERIMENT_NAME"], tmp_path)


def test_run_is_logged_with_params_metric_history_and_artifacts(tmp_path, store, monkeypatch):
    from clfkit.train.trainer import train

    exp = _experiment(store, tmp_path)
    res = train(_small(), tmp_path / "runs", quiet=True)
    runs = store.search_runs([exp], filter_string="params.`optim.lr` = '0.003'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == res.run_dir.name
    assert run.data.params["model.name"] == "cnn" and run.data.params["train.epochs"] == "2"
    history = store.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(
        [
            r["val_acc"]
            for r in __import__("clfkit.run.reader", fromlist=["read_history"]).read_history(res.run_dir)
        ]
    )
    assert run.data.metrics["test_acc"] == pytest.approx(res.summary["test_acc"])
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id)}
    assert {"summary.json", "curves.png", "confusion.png", "report.html", "recipe.yaml"} <= artifacts


def test_local_mlruns_store_by_default(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from clfkit.train.trainer import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    train(_small(train__epochs=1), "runs", quiet=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("clfkit")
    (run,) = client.search_runs([exp.experiment_id])
    assert "report.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


def test_sweep_is_a_parent_run_with_child_runs(tmp_path, store):
    import yaml

    from clfkit.studies.sweep import run_sweep

    exp = _experiment(store, tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_small(train__epochs=1).to_dict()))
    run_sweep(recipe, ["optim.lr=1e-3,3e-3"], out=tmp_path / "sw", quiet=True, log=lambda s: None)
    runs = store.search_runs([exp])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["optim.lr"] for r in children) == ["0.001", "0.003"]
    assert "report.html" in {a.path for a in store.list_artifacts(parents[0].info.run_id)}


def test_cli_track_option_adds_mlflow(tmp_path, store):
    import yaml
    from click.testing import CliRunner

    from clfkit.cli import cli

    exp = _experiment(store, tmp_path)
    data = _small(train__epochs=1).to_dict()
    data["train"]["track"] = ["tensorboard"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(
        cli, ["train", str(recipe), "--out", str(tmp_path / "runs"), "--quiet", "--track", "mlflow"]
    )
    assert res.exit_code == 0, res.output
    (run,) = store.search_runs([exp])
    assert run.data.params["train.track.1"] == "mlflow"


def test_tune_is_a_parent_run_with_a_child_run_per_trial(tmp_path, store):
    """A tune with train.track: [mlflow]: one parent run for the study, each trial a child run
    with its sampled value as a param and its per-epoch val accuracy."""
    import yaml

    pytest.importorskip("optuna")
    from clfkit.studies.tune import plan_tune, run_tune

    exp = _experiment(store, tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_small(train__epochs=2, train__track=["mlflow"]).to_dict()))
    res = run_tune(
        plan_tune(recipe, ["optim.lr=loguniform(1e-4,1e-2)"], trials=2, out=tmp_path / "tune", pruner="none"),
        log=lambda s: None,
    )
    runs = store.search_runs([exp])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 2 == len(res.rows)
    assert sorted(float(r.data.params["optim.lr"]) for r in children) == pytest.approx(
        sorted(row["optim.lr"] for row in res.rows)
    )
    for child in children:
        assert len(store.get_metric_history(child.info.run_id, "val_acc")) == 2


def test_a_store_failing_during_the_run_does_not_end_it(tmp_path, store, monkeypatch):
    """The store fails at epoch 1 (a server restarting, a locked SQLite file): one warning,
    training goes on, and epoch 1 is sent with epoch 2 once the store answers again. A store
    that fails for the rest of the run leaves an incomplete MLflow run, never a dead run."""
    from mlflow.tracking import MlflowClient

    from clfkit.run.tracking import TrackingWarning
    from clfkit.train.trainer import train

    exp = _experiment(store, tmp_path)
    real = MlflowClient.log_batch
    calls = {"n": 0}

    def flaky(self, run_id, metrics=(), params=(), tags=()):
        if metrics and any(m.step == 1 for m in metrics) and calls["n"] == 0:
            calls["n"] += 1
            raise ConnectionError("store restarting")
        return real(self, run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    with pytest.warns(TrackingWarning) as caught:
        res = train(_small(train__epochs=3), tmp_path / "runs", quiet=True)
    messages = [str(w.message) for w in caught]
    assert any(
        "logging epoch 1" in m and "store restarting" in m and "training goes on" in m for m in messages
    )
    assert any("works again at epoch 2" in m for m in messages)
    (run,) = store.search_runs([exp])
    assert run.info.status == "FINISHED"
    assert [m.step for m in store.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
    assert res.summary["epochs_run"] == 3

    def down(self, *a, **kw):
        raise ConnectionError("store gone")

    monkeypatch.setattr(MlflowClient, "log_batch", down)
    monkeypatch.setattr(MlflowClient, "log_artifact", down)
    with pytest.warns(TrackingWarning) as caught:
        res = train(_small(train__epochs=2), tmp_path / "runs2", quiet=True)
    assert res.summary["epochs_run"] == 2 and (res.run_dir / "report.html").is_file()
    assert any("is incomplete" in str(w.message) for w in caught)


def test_tensorboard_failing_during_the_run_does_not_end_it(tmp_path, monkeypatch):
    """A full disk under run/tensorboard raised out of the epoch and ended the run."""
    import errno

    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    from clfkit.run.tracking import TrackingWarning
    from clfkit.train.trainer import train

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "flush", full)
    monkeypatch.setattr(SummaryWriter, "close", full)
    with pytest.warns(
        TrackingWarning,
        match=r"TensorBoard: writing .*tensorboard failed at epoch 1 "
        r"\(No space left on device\); training goes on",
    ) as caught:
        res = train(_small(train__epochs=2, train__track=["tensorboard"]), tmp_path / "runs", quiet=True)
    assert res.summary["epochs_run"] == 2
    assert sum("TensorBoard" in str(w.message) for w in caught) == 1  # said once, then off
