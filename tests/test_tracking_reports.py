"""Issue 16's loose ends: an export logged into the MLflow run that trained it, one warning per
bad metrics.jsonl (also from `clfkit report`), `clfkit eval` rebuilding report.html, and a
duplicated YAML key reported at its dotted path."""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import pytest

from conftest import invoke, new_experiment, tiny_recipe


# --------------------------------------------------------------------------- export -> MLflow
@pytest.fixture(scope="module")
def mlflow_run(mlflow_store, tmp_path_factory):
    """One tiny run trained with train.track: [mlflow] into the session's SQLite store."""
    from mlflow.tracking import MlflowClient

    from clfkit.train.trainer import train

    tmp = tmp_path_factory.mktemp("mlflow-export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_store)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "clfkit-export")
        client = MlflowClient(mlflow_store)
        new_experiment(client, "clfkit-export", tmp)
        recipe = tiny_recipe(
            train__epochs=1,
            train__track=["mlflow"],
            data__source={
                "name": "shapes",
                "num_classes": 4,
                "train_size": 64,
                "val_size": 32,
                "test_size": 32,
            },
        )
        res = train(recipe, tmp / "runs", quiet=True)
    return res.run_dir, client, tmp


def test_export_is_logged_to_the_mlflow_run_that_trained_it(mlflow_run, tmp_path):
    run, client, _ = mlflow_run
    recorded = json.loads((run / "tracking.json").read_text())
    out = tmp_path / "model.onnx"
    code, text = invoke("export", run, "-o", out)
    assert code == 0, text
    run_id = recorded["mlflow_run_id"]
    assert f"logged model.onnx to MLflow run {run_id}" in text and "warning" not in text
    logged = client.list_artifacts(run_id, "exported")
    assert [(a.path, a.file_size) for a in logged] == [("exported/model.onnx", out.stat().st_size)]
    assert client.get_run(run_id).info.status == "FINISHED"  # reopened, not restarted or killed


def _hide_mlflow(monkeypatch):
    """Importing mlflow (or its already imported submodule) now raises ImportError."""
    for name in ("mlflow", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, name, None)


def _copy_with_tracking(run, dest, **record):
    """A copy of run folder ``run`` whose tracking.json says ``record`` (over the real one)."""
    copy = shutil.copytree(run, dest / run.name)
    saved = json.loads((copy / "tracking.json").read_text())
    (copy / "tracking.json").write_text(json.dumps({**saved, **record}))
    return copy


@pytest.mark.parametrize("why", ["no mlflow", "store gone", "unknown run"])
def test_export_succeeds_with_one_warning_when_mlflow_cannot_log(mlflow_run, tmp_path, monkeypatch, why):
    from clfkit.run.tracking import log_export

    run, _, _ = mlflow_run
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"an export")
    if why == "no mlflow":
        _hide_mlflow(monkeypatch)
        words = ["mlflow is not installed here"]
    elif why == "store gone":
        run = _copy_with_tracking(run, tmp_path, tracking_uri=f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}")
        words = ["no longer exists", str(tmp_path / "gone" / "mlflow.db")]
    else:
        run = _copy_with_tracking(run, tmp_path, mlflow_run_id="0123456789abcdef0123456789abcdef")
        words = ["0123456789abcdef0123456789abcdef"]
    run_id, problem = log_export(run, [onnx])
    assert run_id is None and "the export was not logged to MLflow run" in problem
    for w in words:
        assert w in problem, problem
    assert not (tmp_path / "gone").exists(), "a missing store must not be created empty"


def test_export_of_a_run_without_mlflow_says_nothing_about_it(tmp_path):
    from clfkit.run.tracking import log_export

    (tmp_path / "best.pt").write_bytes(b"")
    assert log_export(tmp_path, [tmp_path / "best.pt"]) == (None, None)


def test_cli_export_warns_in_one_line_and_exits_0_without_mlflow(mlflow_run, tmp_path, monkeypatch):
    """The CLI's side: an export that succeeded (test above: a real one) stays a success."""
    import clfkit.deploy.export
    from clfkit.deploy.export import ExportResult

    def fake_export(run_dir, out, **options):
        out.write_bytes(b"onnx")
        return ExportResult(out, 0.0, 1.0, 16)

    run, _, _ = mlflow_run
    monkeypatch.setattr(clfkit.deploy.export, "export_run", fake_export)
    _hide_mlflow(monkeypatch)
    code, text = invoke("export", run, "-o", tmp_path / "m.onnx")
    assert code == 0 and (tmp_path / "m.onnx").is_file() and "wrote " in text, text
    warning = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "mlflow is not installed" in warning[0], text


# --------------------------------------------------------------------------- metrics.jsonl readers
GOOD = [
    {"epoch": e, "train_acc": 0.5, "train_loss": 1.0, "val_acc": 0.4 + e / 10, "val_loss": 1.0}
    for e in (1, 2)
]


def _run_with_lines(tmp_path, *lines: str):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    (run / "summary.json").write_text(json.dumps({"best_epoch": 2, "best_val_acc": 0.6}))
    return run


def test_report_warns_about_a_garbage_metrics_line(tmp_path):
    run = _run_with_lines(tmp_path, json.dumps(GOOD[0]), "{garbage", json.dumps(GOOD[1]))
    with pytest.warns(UserWarning, match=r"metrics.jsonl, line 2: not valid JSON; line skipped"):
        code, text = invoke("report", run)
    assert code == 0, text
    page = (run / "report.html").read_text()
    assert '<h2 id="epochs">' in page and "0.6000" in page  # epoch 2's val_acc, read past the bad line


def test_bad_lines_warn_once_per_file_with_every_line_number(tmp_path):
    from clfkit.run.metrics_log import write_metrics_csv
    from clfkit.run.reader import read_history, read_run

    run = _run_with_lines(tmp_path, json.dumps(GOOD[0]), "[1]", json.dumps(GOOD[1]), '{"epoch": 0}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [r["epoch"] for r in read_history(run)] == [1, 2]
        read_run(run)
        write_metrics_csv(run)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert (
        "line 2: a JSON list" in message
        and "line 4: 'epoch' is 0" in message
        and "2 lines skipped" in message
    )
    assert (run / "metrics.csv").read_text().count("\n") == 3  # header + the two good rows


def test_no_metrics_reader_parses_the_file_itself():
    """Every reader of metrics.jsonl goes through clfkit.run.reader.read_history."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("clfkit", "bench", "plugins")
        for p in (root / folder).rglob("*.py")
        if 'metrics.jsonl").read_text' in p.read_text(encoding="utf-8")
        or "metrics.jsonl').read_text" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


# --------------------------------------------------------------------------- eval -> report.html
def _table_rows(page: str, section_id: str) -> list[list[str]]:
    """The cells of the table after <h2 id=section_id>."""
    import re

    part = page.split(f'<h2 id="{section_id}">', 1)[1].split("<h2", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in part.split("<tr>")[2:]]


def test_eval_rebuilds_report_html(trained_run, tmp_path):
    run = shutil.copytree(trained_run.run_dir, tmp_path / "run")
    for earlier in run.glob("eval_*.json"):  # other tests may have evaluated the shared run
        earlier.unlink()
    (run / "mistakes.json").write_text(json.dumps({"split": "test", "images": 96, "mistakes": []}))
    assert invoke("report", run)[0] == 0
    before = (run / "report.html").read_text()
    assert _table_rows(before, "evals") == [] and "no misclassified image in the test split" in before
    code, text = invoke("eval", run, "--split", "val", "--checkpoint", "last.pt")
    assert code == 0, text
    result = json.loads((run / "eval_val.json").read_text())
    page = (run / "report.html").read_text()
    (row,) = _table_rows(page, "evals")
    assert row[:6] == [
        "eval_val.json",
        "val",
        "none",
        "last.pt",
        f"{result['acc']:.4f}",
        f"{result['loss']:.4f}",
    ]
    assert "errors of last.pt on the val split" in page  # mistakes.json rewritten too
    assert json.loads((run / "mistakes.json").read_text())["split"] == "val"
    per_class = _table_rows(page, "per-class")  # per_class.csv: the val split now
    assert [r[:2] for r in per_class] == [["val", name] for name in result["class_names"]]

    code, text = invoke("eval", run, "--split", "val", "--tta", "flip")
    assert code == 0, text
    flip = json.loads((run / "eval_val_tta-flip.json").read_text())
    rows = _table_rows((run / "report.html").read_text(), "evals")
    assert [r[:5] for r in rows] == [
        ["eval_val.json", "val", "none", "last.pt", f"{result['acc']:.4f}"],
        ["eval_val_tta-flip.json", "val", "flip", "best.pt", f"{flip['acc']:.4f}"],
    ]
    assert "errors of last.pt on the val split" in (run / "report.html").read_text()  # flip leaves them


# --------------------------------------------------------------------------- duplicate YAML keys
@pytest.mark.parametrize(
    "text,path,lines",
    [
        ("name: a\nname: b\n", "name", (1, 2)),
        ("optim:\n  name: sgd\n  lr: 0.1\n  lr: 0.2\n", "optim.lr", (3, 4)),
        ("data:\n  source:\n    name: shapes\n    name: folder\n", "data.source.name", (3, 4)),
        (
            "data:\n  augment:\n    - name: HorizontalFlip\n    - name: PadCrop\n      padding: 2\n      padding: 4\n",
            "data.augment.1.padding",
            (5, 6),
        ),
        ("sweep:\n  variants:\n    - [1, {lr: 1, lr: 2}]\n", "sweep.variants.0.1.lr", (3, (12, 19))),
        ("base: &b {lr: 1, lr: 2}\noptim: *b\n", "base.lr", (1, (11, 18))),
    ],
)
def test_duplicate_key_is_reported_at_its_dotted_path(tmp_path, text, path, lines):
    from clfkit.errors import RecipeError
    from clfkit.recipe import read_yaml

    file = tmp_path / "r.yaml"
    file.write_text(text)
    with pytest.raises(RecipeError) as err:
        read_yaml(file)
    ((where, message),) = err.value.problems
    key = path.rsplit(".", 1)[-1]
    line, other = lines  # other: the second line, or the two columns when both are on one line
    where_text = (
        f"on line {line} (columns {other[0]} and {other[1]})"
        if isinstance(other, tuple)
        else f"on line {line} and on line {other}"
    )
    assert where == path and f"key {key!r} is given twice, {where_text}" in message, message
    code, out = invoke("recipe", "check", file)
    assert code == 2 and f"  {path}: key {key!r} is given twice" in out and "<root>" not in out, out


def test_merge_key_override_is_not_a_duplicate(tmp_path):
    from clfkit.recipe import read_yaml

    file = tmp_path / "r.yaml"
    file.write_text("base: &b {name: sgd, lr: 0.1}\noptim:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(file)["optim"] == {"name": "sgd", "lr": 0.2}


def test_duplicate_key_in_a_set_value_names_the_full_path():
    from clfkit.errors import RecipeError
    from clfkit.recipe import parse_override

    with pytest.raises(RecipeError) as err:
        parse_override("optim={name: sgd, lr: 1, lr: 2}")
    assert err.value.problems[0][0] == "optim.lr"
