"""Red team of 2026-12-02 (rtA): clfkit tune / sweep / MLflow tracking through the CLI, with
odd folder names, MLflow stores that cannot be used, and edited tune folders."""
from __future__ import annotations

import socket
import time

import pytest
import yaml

from conftest import invoke, refused, tiny_recipe_file

ODD_NAMES = ["a?b", "50%41", "n#1", "sp ace ü"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe_file(tmp_path_factory.mktemp("rt19"), train__epochs=1, data__image_size=8)


# --------------------------------------------------------------------------- odd folder names
@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_study_db_is_in_a_tune_folder_with_an_odd_name(recipe_file, tmp_path, name):
    """--out 't?x' kept study.db in a file named 't' beside it (SQLAlchemy read '?x' as URL
    options), so 't?y' continued the same study; '50%41' opened '50A' and was refused as
    'not a readable Optuna study'."""
    pytest.importorskip("optuna")
    from clfkit.studies.tune import plan_tune
    from clfkit.studies.tune.study import open_study

    out = tmp_path / name
    out.mkdir()
    open_study(plan_tune(recipe_file, ["optim.lr=choice(0.1,0.01)"], None, out=out, sampler="grid"))
    assert (out / "study.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


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
    refused(["mlruns", "MLFLOW_TRACKING_URI", "remove mlflow from train.track"],
            "train", recipe_file, "--track", "mlflow", "--out", tmp_path / "runs", "--quiet")
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
    refused(["cannot be used", "MLFLOW_TRACKING_URI"], "train", recipe_file, "--track", "mlflow",
            "--out", tmp_path / "runs", "--quiet", max_lines=None)
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", [
    ["tune", "--space", "optim.lr=choice(0.1,0.01)", "--sampler", "grid"],
    ["sweep", "--grid", "optim.lr=0.1,0.01"],
])
def test_tune_and_sweep_refuse_a_store_that_cannot_be_used_before_their_folder(recipe_file, tmp_path,
                                                                               monkeypatch, command):
    """A tune or sweep tracking to a store MLflow refuses died with MLflow's traceback, after
    writing study.db or sweep.json; now it is refused as `clfkit train` refuses it."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(recipe_file))  # a plain file: MLflow's refused file store
    out = tmp_path / "study"
    refused(["cannot be used", "sqlite:///", "MLFLOW_TRACKING_URI"], command[0], recipe_file, *command[1:],
            "--set", "train.track=[mlflow]", "--out", out, max_lines=None)
    assert not out.exists()


# --------------------------------------------------------------------------- --seed
def test_a_seed_at_the_top_of_its_range_runs_every_trial(recipe_file, tmp_path):
    """--seed 4294967295 died with numpy's 'Seed must be between 0 and 2**32 - 1' traceback
    after the first trial (the sampler's seed is --seed plus the trials drawn); --seed -1
    before any."""
    pytest.importorskip("optuna")
    from clfkit.studies.tune import TuneError, plan_tune

    code, out = invoke("tune", recipe_file, "--trials", 2, "--seed", 2**32 - 1, "--space",
                       "optim.lr=loguniform(1e-3,1e-1)", "--out", tmp_path / "t", "--quiet")
    assert code == 0, out
    assert len((tmp_path / "t" / "trials.csv").read_text().splitlines()) == 3
    code, out = invoke("tune", recipe_file, "--seed", -1, "--space", "optim.lr=loguniform(1e-3,1e-1)",
                       "--out", tmp_path / "u")
    assert code == 2 and "--seed" in out and "4294967295" in out and not (tmp_path / "u").exists()
    with pytest.raises(TuneError, match="--seed -1: give a seed from 0 to 4294967295"):
        plan_tune(recipe_file, ["optim.lr=loguniform(1e-3,1e-1)"], 2, out=tmp_path / "v", seed=-1)


# --------------------------------------------------------------------------- text in figures
MATH = ["$\\frac$ a", "$x$", "cost $5"]  # matplotlib reads text between two $ as math


def test_class_and_run_names_with_dollar_signs_are_drawn_as_text(tmp_path, monkeypatch):
    """A class folder named '$\\frac$ a' ended training with matplotlib's ParseSyntaxException
    traceback while drawing confusion.png (after summary.json, before report.html); a run
    folder named so did the same to `clfkit compare`, and '$x$' was drawn as math."""
    import json

    from matplotlib.text import Text

    from clfkit.run import plots

    drawn = []
    real = Text.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        drawn.append(self)

    monkeypatch.setattr(Text, "__init__", spy)
    plots.plot_confusion([[1, 0, 1], [0, 2, 0], [1, 1, 0]], MATH, tmp_path / "confusion.png", title="$\\frac$")
    run = tmp_path / "r$\\frac$"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                                                   "val_loss": 1.0, "val_acc": 0.5}) + "\n")
    code, out = invoke("compare", run, "-o", tmp_path / "compare.png", "--title", "$x$")
    assert code == 0, out
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "compare.png").is_file()
    texts = [t for t in drawn if "$" in t.get_text()]
    assert texts and not any(t.get_parse_math() for t in texts)


# --------------------------------------------------------------------------- report.html of a damaged run
def _run_folder(path):
    import json

    path.mkdir()
    (path / "summary.json").write_text(json.dumps({"name": "r", "best_val_acc": 0.5, "best_epoch": 1}))
    (path / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_acc": 0.5}) + "\n")
    return path


@pytest.mark.parametrize("file, content, why", [
    ("per_class.csv", b"split,class,accuracy\r\ntest,\xe9t\xe9,0.5\r\n", "UnicodeDecodeError"),  # a spreadsheet's cp1252
    ("per_class.csv", b"split,class,accuracy\ntest,a,0.5,extra\n", "one cell per column"),
    ("mistakes.json", b'{"mistakes": "none", "split": "test"}', "not the list of mistakes"),
    ("mistakes.json", b'{"mistakes": [{"true": "a"}], "split": "test"}', "png_base64"),
    ("mistakes.json", b'{"mistakes": [{"true": "a", "predicted": "b", "confidence": 0.5, '
                      b'"png_base64": "\\" onerror=\\"alert(1)"}]}', "base64"),
])
def test_report_of_a_run_with_a_damaged_file_shows_the_rest(tmp_path, file, content, why):
    """`clfkit report` died with a traceback (TypeError, KeyError, UnicodeDecodeError,
    AttributeError) on a per_class.csv or mistakes.json that was edited or re-saved; and an
    edited image string reached the page unescaped (an onerror attribute on a 'no script' page)."""
    run = _run_folder(tmp_path / "r")
    (run / file).write_bytes(content)
    with pytest.warns(UserWarning) as shown:
        code, out = invoke("report", run)
    assert code == 0, out
    said = [str(w.message) for w in shown if f"{run / file} cannot be read" in str(w.message)]
    assert len(said) == 1 and why in said[0], [str(w.message) for w in shown]
    page = (run / "report.html").read_text()
    assert f"{file} cannot be read" in page and "onerror" not in page and "Epochs" in page


def test_report_shows_a_recipe_that_is_not_utf8(tmp_path):
    run = _run_folder(tmp_path / "r")
    (run / "recipe.yaml").write_bytes(b"name: caf\xe9\n")
    code, out = invoke("report", run)
    assert code == 0, out
    assert "name: caf\ufffd" in (run / "report.html").read_text()


def test_a_recipe_name_at_the_length_limit_gets_its_best_yaml(recipe_file, tmp_path):
    """A 200-character recipe name: every trial trained, then best.yaml's '<name>-best' (205
    characters) was refused, so the tune exited 2 with no report.html, and so did every rerun."""
    pytest.importorskip("optuna")
    code, out = invoke("tune", recipe_file, "--trials", 1, "--set", f"name={'a' * 200}", "--space",
                       "optim.lr=loguniform(1e-3,1e-1)", "--out", tmp_path / "t", "--quiet")
    assert code == 0, out
    best = yaml.safe_load((tmp_path / "t" / "best.yaml").read_text())
    assert best["name"] == "a" * 195 + "-best" and (tmp_path / "t" / "report.html").is_file()


def test_a_deleted_experiment_is_refused_before_the_run_folder(recipe_file, tmp_path, monkeypatch, mlflow_store):
    """The experiment deleted in MLflow (to clean up, say): every tracked run died with
    MLflow's 'must be in the active state' traceback, leaving a half-made run folder."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_store)
    client.delete_experiment(client.create_experiment("rt19-deleted", artifact_location=(tmp_path / "a").as_uri()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "rt19-deleted")
    refused(["'rt19-deleted'", "was deleted", "restore_experiment", "MLFLOW_EXPERIMENT_NAME"], "train", recipe_file,
            "--track", "mlflow", "--out", tmp_path / "runs", "--quiet", max_lines=None)
    assert not (tmp_path / "runs").exists()
