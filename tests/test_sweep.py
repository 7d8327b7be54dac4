"""clfkit sweep: a 6-run grid of tiny settings, its tables, and a re-run that trains nothing."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from clfkit.run.plots import DPI, compare_inches
from clfkit.studies.sweep import SweepError, parse_grid, plan_sweep, run_sweep

# Three classes of 8 px shapes, a two-block CNN of 8 and 16 channels, two epochs: the sweep's
# planning, tables and re-runs are the test, not what the runs learn.
BASE = {
    "name": "tinysweep",
    "seed": 0,
    "data": {
        "source": {"name": "shapes", "num_classes": 3, "train_size": 96, "val_size": 32, "test_size": 32},
        "image_size": 8,
    },
    "model": {"name": "cnn", "blocks": [{"channels": 8, "pool": "max"}, {"channels": 16, "pool": "max"}]},
    "optim": {"name": "adam", "lr": 3e-3},
    "train": {"epochs": 2, "batch_size": 32},
}


def write_recipe(path: Path, sweep: dict | None = None, **train) -> Path:
    data = {**BASE, "train": {**BASE["train"], **train}}
    if sweep is not None:
        data["sweep"] = sweep
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture()
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other tests for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_six_run_sweep_tables_and_rerun(tmp_path, one_thread, monkeypatch):
    # one axis from the sweep file, one from --grid: 2 x 3 = 6 runs
    recipe = write_recipe(tmp_path / "tiny.yaml", sweep={"optim.lr": [3e-3, 1e-3]})
    out = tmp_path / "sw"
    logs: list[str] = []
    sweep = run_sweep(recipe, ["model.head_dropout=0,0.3,0.6"], out=out, quiet=True, log=logs.append)

    names = sorted(t.name for t in sweep.trials)
    assert names == sorted(
        f"lr={lr},head_dropout={d}" for lr in ("0.003", "0.001") for d in ("0", "0.3", "0.6")
    )
    assert all(t.status == "done" for t in sweep.trials), logs
    rows = read_csv(out / "sweep.csv")
    assert len(rows) == 6
    assert list(rows[0])[:4] == ["rank", "run", "optim.lr", "model.head_dropout"]
    for col in ("best_val_acc", "best_epoch", "train_acc", "test_acc", "wall_seconds", "status"):
        assert col in rows[0]
    accs = [float(r["best_val_acc"]) for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert [int(r["rank"]) for r in rows] == list(range(1, 7))
    for r in rows:
        run = out / r["run"]
        assert r["status"] == "done"
        assert r["run"] == f"lr={r['optim.lr']},head_dropout={r['model.head_dropout']}"
        summary = yaml.safe_load((run / "summary.json").read_text())
        assert float(r["best_val_acc"]) == pytest.approx(summary["best_val_acc"], abs=1e-6)
        assert float(r["test_acc"]) == pytest.approx(summary["test_acc"], abs=1e-6)
        assert int(r["best_epoch"]) == summary["best_epoch"]
        # the recipe of the run has the values its name says
        rec = yaml.safe_load((run / "recipe.yaml").read_text())
        assert rec["optim"]["lr"] == pytest.approx(float(r["optim.lr"]))
        assert rec["model"]["head_dropout"] == pytest.approx(float(r["model.head_dropout"]))
        for png in ("curves.png", "confusion.png"):
            with Image.open(run / png) as im:
                im.verify()
        assert (run / "per_class.csv").is_file() and (run / "metrics.csv").is_file()
    md = (out / "sweep.md").read_text()
    assert md.count("\n| ") == 7  # header + 6 runs
    w, h = compare_inches(6)
    with Image.open(out / "compare.png") as im:
        assert im.format == "PNG" and im.size == (round(w * DPI), round(h * DPI))

    # ---- the same sweep again: nothing is trained
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*.pt")} | {
        p: p.stat().st_mtime_ns for p in out.glob("*/summary.json")
    }
    assert len(stamps) == 18

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("clfkit.train.trainer.train", no_training)
    logs.clear()
    again = run_sweep(recipe, ["model.head_dropout=0,0.3,0.6"], out=out, quiet=True, log=logs.append)
    assert "6 already finished, 0 to train" in logs[0]
    assert all(t.status == "done" for t in again.trials)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert read_csv(out / "sweep.csv") == rows
    monkeypatch.undo()

    # ---- an unfinished run (no summary.json) is completed, the others are left alone
    victim = out / rows[-1]["run"]
    (victim / "summary.json").unlink()
    logs.clear()
    run_sweep(recipe, ["model.head_dropout=0,0.3,0.6"], out=out, quiet=True, log=logs.append)
    assert "5 already finished, 1 to train" in logs[0]
    assert (victim / "summary.json").is_file()
    others = {p: s for p, s in stamps.items() if p.parent != victim}
    assert {p: p.stat().st_mtime_ns for p in others} == others

    # ---- a changed base recipe does not silently mix with the old runs
    write_recipe(recipe, sweep={"optim.lr": [3e-3, 1e-3]}, epochs=4)
    with pytest.raises(SweepError, match="different recipe.*train.epochs"):
        run_sweep(recipe, ["model.head_dropout=0,0.3,0.6"], out=out, quiet=True, log=logs.append)


def test_cli_sweep_and_compare(tmp_path, one_thread):
    from clfkit.cli import cli

    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=1)
    out = tmp_path / "sw"
    runner = CliRunner()
    res = runner.invoke(
        cli, ["sweep", str(recipe), "--grid", "model.norm=batch,none", "--out", str(out), "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert "| 1 |" in res.output and "norm=none" in res.output
    res = runner.invoke(cli, ["compare", str(out), "--top", "1", "-o", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("norm=") and lines[1].startswith("wrote")
    w, h = compare_inches(1)
    with Image.open(tmp_path / "c.png") as im:
        assert im.size == (round(w * DPI), round(h * DPI))
    res = runner.invoke(cli, ["sweep", str(recipe), "--out", str(out)])
    assert res.exit_code != 0 and "nothing to sweep" in res.output


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="parallel runs need 2 cores")
def test_parallel_jobs(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml", epochs=1)
    sweep = run_sweep(recipe, ["seed=0,1"], out=tmp_path / "sw", jobs=2, quiet=True, log=lambda s: None)
    assert [t.status for t in sweep.trials] == ["done", "done"]
    assert len(read_csv(tmp_path / "sw" / "sweep.csv")) == 2


# --------------------------------------------------------------------------- planning only
def test_parse_grid_values():
    axis = parse_grid("optim.lr=1e-3,5e-4")
    assert axis.key == "optim.lr"
    assert [o for _, o in axis.options] == [{"optim.lr": 1e-3}, {"optim.lr": 5e-4}]
    assert [lbl for lbl, _ in axis.options] == ["1e-3", "5e-4"]
    axis = parse_grid("model.hidden=[512,256],[1024]")
    assert [o["model.hidden"] for _, o in axis.options] == [[512, 256], [1024]]
    assert [
        o["model.norm"] for _, o in parse_grid("model.norm=batch,none,{name: group, groups: 4}").options
    ] == ["batch", "none", {"name": "group", "groups": 4}]
    for bad in ("optim.lr", "optim.lr=", "optim.lr=1,,2", "9x=1,2"):
        with pytest.raises(Exception):
            parse_grid(bad)


def test_sweep_file_variants_and_labels(tmp_path):
    recipe = write_recipe(
        tmp_path / "abl.yaml",
        sweep={
            "model.norm": {"bn": "batch", "no_bn": "none"},
            "variants": {
                "full": {},
                "wo_drop": {"model.head_dropout": 0.0},
                "drop": {"model.head_dropout": 0.5},
            },
        },
    )
    sweep = plan_sweep(recipe, out=tmp_path / "o")
    assert [t.name for t in sweep.trials] == [
        "norm=bn,full",
        "norm=bn,wo_drop",
        "norm=bn,drop",
        "norm=no_bn,full",
        "norm=no_bn,wo_drop",
        "norm=no_bn,drop",
    ]
    t = sweep.trials[5]
    assert t.recipe.model["norm"]["name"] == "none"
    assert t.recipe.model["head_dropout"] == 0.5
    assert t.values == {"model.norm": "no_bn", "variant": "drop"}
    assert not (tmp_path / "o").exists()  # planning writes nothing


def test_invalid_combination_fails_before_training(tmp_path):
    recipe = write_recipe(tmp_path / "tiny.yaml")
    with pytest.raises(SweepError, match=r"(?s)head_dropout=1.5.*model.head_dropout"):
        run_sweep(recipe, ["model.head_dropout=0,1.5"], out=tmp_path / "o", log=lambda s: None)
    assert not (tmp_path / "o").exists()
    with pytest.raises(Exception, match="did you mean"):
        plan_sweep(recipe, ["optim.lrr=0.1,0.2"])


def test_committed_sweep_files_plan(monkeypatch):
    """Every recipes/*.yaml with a sweep: block plans (all combinations validate)."""
    from clfkit.recipe import read_yaml

    repo = Path(__file__).parent.parent
    monkeypatch.chdir(repo)  # the recipes' data roots are relative to the repository
    files = [p for p in sorted((repo / "recipes").glob("*.yaml")) if "sweep" in read_yaml(p)]
    assert files
    for path in files:
        sweep = plan_sweep(path.relative_to(repo))
        assert len(sweep.trials) >= 2


@pytest.mark.parametrize("command", ["sweep", "tune"])
def test_more_jobs_than_cores_are_refused_before_any_folder(tmp_path, monkeypatch, command):
    """--jobs 500 spawned 500 interpreters, each with its own torch: the count is refused with the
    machine's core count, before a sweep or tune folder exists."""
    from conftest import refused, tiny_recipe_file

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    recipe = tiny_recipe_file(tmp_path)
    out = tmp_path / "study"
    extra = (
        ["--grid", "seed=0,1"]
        if command == "sweep"
        else ["--space", "optim.lr=loguniform(1e-3,1e-1)", "--trials", 2]
    )
    refused(
        ["--jobs 4", "3 CPU core(s)", "--jobs 3 or fewer"], command, recipe, *extra, "--jobs", 4, "--out", out
    )
    assert not out.exists()
