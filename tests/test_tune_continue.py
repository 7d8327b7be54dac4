"""clfkit tune under signals and changes (issue 22, class 5): --jobs 2 stops like sweep --jobs 2
on Ctrl-C to the group, SIGINT or SIGTERM to the tune process alone; a continued study on changed
data is refused, a missing val split is found before the first trial, the --space order does not
matter, and a continued study stays one MLflow parent run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, invoke, new_experiment, refused, write_image_folder

pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- signals with --jobs 2
SLOW = {
    **TINY,
    "name": "slow",
    "model": {"name": "mlp", "hidden": [32]},
    "data": {
        **TINY["data"],
        "image_size": 8,
        "source": {**TINY["data"]["source"], "train_size": 128, "val_size": 32, "test_size": 16},
    },
    "train": {"epochs": 500, "batch_size": 16},
}


def _group_alive(pgid: int) -> list[str]:
    """The processes still in process group ``pgid`` (the tune and its workers)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


# SIGINT to the tune process alone takes the path of SIGTERM alone (one handler for both): two
# cases keep the suite's time (each starts three Python processes that import torch)
@pytest.mark.parametrize("sig, code, group", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)])
def test_signal_stops_a_parallel_tune_cleanly(tmp_path, sig, code, group):
    """group: a terminal's Ctrl-C (every process); else a kill of the tune process alone. Was: a
    BrokenProcessPool traceback and no tables; ignored; workers left training on their own."""
    recipe = _write(tmp_path / "slow.yaml", SLOW)
    out = tmp_path / "tune"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLFKIT_PLUGINS": "none"}
    cmd = [
        sys.executable,
        "-m",
        "clfkit",
        "tune",
        str(recipe),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--trials",
        "4",
        "--space",
        "optim.lr=loguniform(1e-3,1e-2)",
        "--pruner",
        "none",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )  # its own group, whichever way it is signalled
    deadline = time.time() + 150
    while not list(out.glob("trials/*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until a trial has trained an epoch (the other worker may still be starting)
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    t0 = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    assert time.time() - t0 < 60, output
    assert "Traceback" not in output and signal.Signals(sig).name in output
    assert "Run the same command again" in output
    time.sleep(0.5)
    assert _group_alive(proc.pid) == [], output  # no worker left training
    md = (out / "trials.md").read_text()
    runs = list((out / "trials").iterdir())
    assert md.count("| stopped |") == len(runs) in (1, 2), md  # no trial started after the signal
    for run in runs:  # each stopped trial saved its state, none finished
        assert (run / "last.pt").is_file() and not (run / "summary.json").exists()


# --------------------------------------------------------------------------- changes between runs
def _folder_recipe(tmp_path: Path, **data_changes) -> Path:
    root = write_image_folder(tmp_path / "data", per_class=6, size=8)
    data = {
        **TINY,
        "name": "ftune",
        "model": {"name": "mlp", "hidden": [8]},
        "data": {
            "source": {"name": "folder", "root": str(root)},
            "image_size": 8,
            "val_fraction": 0.34,
            **data_changes,
        },
        "train": {"epochs": 1, "batch_size": 4},
    }
    return _write(tmp_path / "f.yaml", data)


def _tune(recipe: Path, out: Path, trials: int, *spaces: str) -> tuple[int, str]:
    words = [w for s in spaces or ("optim.lr=loguniform(1e-3,1e-2)",) for w in ("--space", s)]
    return invoke("tune", recipe, "--out", out, "--trials", trials, "--pruner", "none", "--quiet", *words)


def test_a_study_on_changed_data_is_refused(tmp_path):
    recipe, out = _folder_recipe(tmp_path), tmp_path / "t"
    assert _tune(recipe, out, 1)[0] == 0
    extra = tmp_path / "data" / "train" / "cat" / "cat_0.png"
    extra.write_bytes(extra.read_bytes() + b"\0")  # one file's content: same name, another size
    (tmp_path / "data" / "train" / "dog" / "new.png").write_bytes(
        (tmp_path / "data/train/dog/dog_0.png").read_bytes()
    )
    msg = refused(
        ["changed since it began", "1 file(s) added", "1 file(s) changed", "another --out"],
        "tune",
        recipe,
        "--out",
        out,
        "--trials",
        2,
        "--pruner",
        "none",
        "--quiet",
        "--space",
        "optim.lr=loguniform(1e-3,1e-2)",
    )
    assert str(tmp_path / "data") in msg
    assert [p.name for p in (out / "trials").iterdir()] == ["trial-000"]  # no trial ran
    (tmp_path / "data" / "train" / "dog" / "new.png").unlink()
    extra.write_bytes(extra.read_bytes()[:-1])  # restored: the study continues
    code, output = _tune(recipe, out, 2)
    assert code == 0 and "1 of 2 trial(s) already done" in output, output


@pytest.mark.parametrize("space", [None, "data.val_fraction=choice(0.3,0.0)"])
def test_no_val_split_is_refused_before_the_first_trial(tmp_path, space):
    recipe, out = _folder_recipe(tmp_path, val_fraction=0.0 if space is None else 0.3), tmp_path / "t"
    spaces = ("optim.lr=loguniform(1e-3,1e-2)",) + ((space,) if space else ())
    words = [w for s in spaces for w in ("--space", s)]
    refused(
        ["val accuracy", "data.val_fraction", "val/ folder", "No trial was run"],
        "tune",
        recipe,
        "--out",
        out,
        "--trials",
        2,
        "--quiet",
        *words,
    )
    assert not (out / "trials").exists()


def test_the_order_of_the_spaces_does_not_make_a_new_study(tmp_path):
    recipe, out = _folder_recipe(tmp_path), tmp_path / "t"
    a, b = "optim.lr=loguniform(1e-3,1e-2)", "train.batch_size=choice(2,4)"
    assert _tune(recipe, out, 1, a, b)[0] == 0
    code, output = _tune(recipe, out, 1, b, a)
    assert code == 0 and "1 of 1 trial(s) already done" in output, output


def test_a_continued_study_is_one_mlflow_parent_run(tmp_path, mlflow_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"tune-{tmp_path.name}")
    client = MlflowClient(mlflow_store)
    exp = new_experiment(client, f"tune-{tmp_path.name}", tmp_path)
    recipe = _folder_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["train"]["track"] = ["mlflow"]
    _write(recipe, data)
    assert _tune(recipe, tmp_path / "t", 1)[0] == 0
    assert _tune(recipe, tmp_path / "t", 2)[0] == 0
    runs = client.search_runs([exp])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sum(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in runs) == 2
