"""Sweeps over seeds: mean +- sd and a 95% interval per variant, Welch's verdict, the sweep
report page with curves and per-class deltas, through the CLI."""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY, invoke, refused, set_recorded_epochs, tiny_recipe

SMALL = {
    "data__source__train_size": 96,
    "data__source__val_size": 32,
    "data__source__test_size": 32,
    "train__epochs": 2,
}


def _recipe(path, sweep=None):
    data = tiny_recipe(name="s", **SMALL).to_dict()
    if sweep is not None:
        data["sweep"] = sweep
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_recipe_against_itself_is_within_noise(tmp_path):
    recipe = _recipe(tmp_path / "self.yaml", {"seeds": 3, "variants": {"base": {}, "again": {}}})
    code, out = invoke("sweep", recipe, "--out", tmp_path / "sw", "--quiet")
    assert code == 0, out
    rows = list(csv.DictReader((tmp_path / "sw" / "seeds.csv").open()))
    assert [r["variant"] for r in rows] in (["base", "again"], ["again", "base"])
    assert all(r["seeds"] == "3" for r in rows)
    assert rows[0]["verdict"] == "best" and rows[1]["verdict"] == "within noise"
    assert "within noise" in out and "± " in out  # the table is printed too
    # six runs: each variant under the recipe's seed 0 and the next two
    names = sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir())
    assert names == sorted(f"{v},seed={s}" for v in ("base", "again") for s in range(3))
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "Variants over seeds" in page and "Mean curves over seeds" in page and "Per-class" in page


def test_seeds_flag_on_a_grid_gives_intervals_and_class_deltas(tmp_path):
    recipe = _recipe(tmp_path / "r.yaml")
    code, out = invoke(
        "sweep", recipe, "--grid", "optim.lr=1e-6,3e-3", "--seeds", "2", "--out", tmp_path / "sw", "--quiet"
    )
    assert code == 0, out
    by_run = {r["run"]: r for r in csv.DictReader((tmp_path / "sw" / "sweep.csv").open())}
    assert set(by_run) == {f"lr={lr},seed={s}" for lr in ("1e-6", "3e-3") for s in (0, 1)}
    rows = {r["variant"]: r for r in csv.DictReader((tmp_path / "sw" / "seeds.csv").open())}
    for lr in ("1e-6", "3e-3"):
        vals = [float(by_run[f"lr={lr},seed={s}"]["best_val_acc"]) for s in (0, 1)]
        r = rows[f"lr={lr}"]
        mean, sd = sum(vals) / 2, abs(vals[0] - vals[1]) / math.sqrt(2)
        assert float(r["val_acc_mean"]) == pytest.approx(mean, abs=1e-6)
        assert float(r["val_acc_sd"]) == pytest.approx(sd, abs=1e-6)
        half = 12.7062 * sd / math.sqrt(2)  # t(0.975, 1 degree of freedom)
        # an accuracy's interval is clipped to [0, 1]
        assert float(r["val_acc_ci95_high"]) == pytest.approx(min(1.0, mean + half), abs=1e-4)
        assert float(r["val_acc_ci95_low"]) == pytest.approx(max(0.0, mean - half), abs=1e-4)
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "baseline (lr=1e-6)" in page or "the baseline (lr=1e-6" in page


def test_statistics():
    from clfkit.studies.sweep.seeds import mean_sd_ci, welch_p

    s = mean_sd_ci([1.0, 2.0, 3.0])
    assert (
        s["mean"] == 2 and s["sd"] == 1 and s["ci_high"] == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-4)
    )
    assert mean_sd_ci([0.5])["sd"] is None and mean_sd_ci([])["mean"] is None
    near_one = mean_sd_ci([0.96, 1.0, 1.0], bounds=(0.0, 1.0))  # unclipped: [0.93, 1.04]
    assert near_one["ci_high"] == 1.0 and near_one["ci_low"] == pytest.approx(
        0.9867 - 4.3027 * 0.023094 / math.sqrt(3), abs=1e-3
    )
    assert mean_sd_ci([0.0, 0.0, 0.04], bounds=(0.0, 1.0))["ci_low"] == 0.0
    assert welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and welch_p([0.5, 0.5], [0.7, 0.7]) == 0.0
    assert welch_p([0.1, 0.2, 0.15], [0.8, 0.9, 0.85]) < 0.05
    assert welch_p([0.5], [0.5, 0.6]) is None


def test_bad_seed_settings_are_refused(tmp_path):
    refused(
        ["sweep.seeds", "whole number"],
        "sweep",
        _recipe(tmp_path / "a.yaml", {"seeds": "three", "optim.lr": [1e-3]}),
    )
    refused(["sweep.seeds"], "sweep", _recipe(tmp_path / "b.yaml", {"seeds": 0}))
    refused(["--seeds", "seed"], "sweep", _recipe(tmp_path / "c.yaml"), "--grid", "seed=1,2", "--seeds", "2")
    code, out = invoke("sweep", _recipe(tmp_path / "d.yaml"), "--seeds", "0")
    assert code == 2 and "--seeds" in out
    refused(["nothing to sweep", "--seeds"], "sweep", _recipe(tmp_path / "e.yaml"))


# --------------------------------------------------------------------------- what a sweep refuses to plan
def test_a_sweep_too_big_to_plan_is_refused_at_once(tmp_path):
    recipe = _recipe(tmp_path / "r.yaml")
    t0 = time.perf_counter()
    refused(
        ["100,000,000 runs", "at most 1,000"],
        "sweep",
        recipe,
        "--seeds",
        "100000000",
        "--out",
        tmp_path / "sw",
    )
    assert time.perf_counter() - t0 < 10  # was: planning for hours
    many = ",".join(f"{i}e-4" for i in range(1, 41))
    refused(
        ["40 optim.lr values x 30 train.batch_size values", "1,200 runs", "1,000"],
        "sweep",
        recipe,
        "--grid",
        f"optim.lr={many}",
        "--grid",
        f"train.batch_size={','.join(map(str, range(1, 31)))}",
        "--out",
        tmp_path / "sw",
    )
    refused(
        ["5,000 runs"],
        "sweep",
        _recipe(tmp_path / "f.yaml", {"seeds": 2500, "optim.lr": [1e-3, 2e-3]}),
        "--out",
        tmp_path / "sw",
    )
    refused(
        ["2,000 values of --grid optim.lr"],
        "sweep",
        recipe,
        "--grid",
        "optim.lr=" + ",".join(str(i) for i in range(2000)),
        "--out",
        tmp_path / "sw",
    )
    assert not (tmp_path / "sw").exists()


def test_seeds_outside_the_valid_range_say_the_range(tmp_path):
    recipe = _recipe(tmp_path / "r.yaml")
    refused(
        ["--seeds 3", "4294967295 to 4294967297", "0 to 4294967295"],
        "sweep",
        recipe,
        "--set",
        "seed=4294967295",
        "--seeds",
        "3",
        "--out",
        tmp_path / "sw",
    )
    refused(
        ["seed: -1 is outside the valid seed range", "0 to 4294967295"],
        "sweep",
        recipe,
        "--grid",
        "seed=0,-1",
        "--out",
        tmp_path / "sw",
    )
    refused(["seed: 4294967296 is outside the valid seed range"], "train", recipe, "--set", "seed=4294967296")
    refused(["seed: -3 is outside the valid seed range"], "lr-find", recipe, "--set", "seed=-3")
    assert not (tmp_path / "sw").exists()


# --------------------------------------------------------------------------- what a re-run leaves
def test_a_rerun_without_seeds_removes_the_stale_seed_tables(tmp_path):
    recipe = _recipe(tmp_path / "r.yaml")
    out = tmp_path / "sw"
    assert invoke("sweep", recipe, "--seeds", "2", "--out", out, "--quiet")[0] == 0
    assert (out / "seeds.md").is_file() and (out / "seeds_curves.png").is_file()
    code, text = invoke("sweep", recipe, "--grid", "seed=0,1", "--out", out, "--quiet")  # the same two runs
    assert code == 0 and "2 already finished" in text, text
    assert not any((out / n).exists() for n in ("seeds.csv", "seeds.md", "seeds_curves.png"))
    assert "removed seeds.csv, seeds.md, seeds_curves.png" in text and "Variants over seeds" not in text
    page = (out / "report.html").read_text()
    assert "Variants over seeds" not in page and "seeds_curves" not in page
    assert 'href="seed=0/report.html"' in page  # the runs' own pages still linked


def test_run_links_are_percent_encoded(tmp_path):
    from urllib.parse import unquote

    from clfkit.run.report_page import write_folder_report

    names = ["a b", "x#1", "50%", "été", "q?=1,+"]
    for n in names:
        (tmp_path / n).mkdir()
        (tmp_path / n / "report.html").write_text("<html></html>")
    page = write_folder_report(tmp_path, "t", "i", [{"run": n} for n in names], []).read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert hrefs == [
        "a%20b/report.html",
        "x%231/report.html",
        "50%25/report.html",
        "%C3%A9t%C3%A9/report.html",
        "q%3F=1,+/report.html",
    ]
    assert all((tmp_path / unquote(h)).is_file() for h in hrefs)


# --------------------------------------------------------------------------- Ctrl-C
SLOW = {
    **TINY,
    "name": "slow",
    "model": {"name": "mlp", "hidden": [64]},
    "data": {**TINY["data"], "source": {**TINY["data"]["source"], "train_size": 128}},
    "train": {"epochs": 500, "batch_size": 16},
}


def test_ctrl_c_stops_a_parallel_seed_sweep_and_a_rerun_continues(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) during --seeds 2 --jobs 2: exit 130, no
    traceback, the tables written (the seed table says no run finished), nothing started after it;
    the same command again resumes the stopped runs and trains the others."""
    import torch

    recipe = tmp_path / "slow.yaml"
    recipe.write_text(yaml.safe_dump(SLOW))
    out = tmp_path / "sw"
    args = [
        "sweep",
        str(recipe),
        "--out",
        str(out),
        "--seeds",
        "2",
        "--grid",
        "optim.lr=0.01,0.02",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CLFKIT_PLUGINS": "none"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clfkit", *args, "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    deadline = time.time() + 150
    while not list(out.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until a run has trained an epoch
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in output and "SIGINT" in output, output
    stopped = [p for p in out.iterdir() if p.is_dir()]
    assert 1 <= len(stopped) <= 2 and all((p / "last.pt").is_file() for p in stopped), output
    assert "no finished run" in (out / "seeds.md").read_text() and (out / "sweep.md").is_file()
    # continue, shortened: every stopped run is recorded as a run of one epoch more than it did
    epochs = 1 + max(torch.load(p / "last.pt", weights_only=False)["epoch"] for p in stopped)
    for p in stopped:
        set_recorded_epochs(p, epochs)
    recipe.write_text(yaml.safe_dump({**SLOW, "train": {**SLOW["train"], "epochs": epochs}}))
    code, text = invoke(*args)
    assert code == 0, text
    assert "0 already finished, 4 to train" in text and text.count("(resuming)") == len(stopped), text
    rows = list(csv.DictReader((out / "seeds.csv").open()))
    assert sorted(r["seeds"] for r in rows) == ["2", "2"] and all(r["val_acc_mean"] for r in rows)


def test_tables_of_a_sweep_with_no_finished_run_leave_no_earlier_figure(tmp_path):
    from clfkit.studies.sweep import plan_sweep, write_tables

    sweep = plan_sweep(_recipe(tmp_path / "r.yaml"), ["optim.lr=1e-3,2e-3"], out=tmp_path / "sw")
    sweep.out.mkdir()
    for name in ("compare.png", "seeds.md", "notes.md"):
        (sweep.out / name).write_text("earlier")
    write_tables(sweep)
    assert sorted(p.name for p in sweep.removed) == ["compare.png", "seeds.md"]
    assert (sweep.out / "notes.md").read_text() == "earlier"  # not a file the sweep writes: kept
    page = (sweep.out / "report.html").read_text()
    assert (
        "compare.png not written" in page and 'alt="compare.png"' not in page
    )  # was: the earlier figure inlined


def test_a_grid_tune_too_big_to_walk_is_refused_at_once(tmp_path):
    """The same class in clfkit tune: --sampler grid queued every point (hours for 357,604)."""
    pytest.importorskip("optuna")
    recipe = _recipe(tmp_path / "r.yaml")
    many = ",".join(str(i) for i in range(1, 300))
    refused(
        ["357,604 combinations", "at most 1,000 of at most 100,000"],
        "tune",
        recipe,
        "--sampler",
        "grid",
        "--space",
        f"train.batch_size=choice({many})",
        "--space",
        f"optim.lr=choice({','.join(str(i / 1000) for i in range(1, 300))})",
        "--space",
        "model.head_dropout=choice(0,0.1,0.2,0.3)",
        "--out",
        tmp_path / "tu",
    )
    refused(
        ["1,196 combinations", "--trials 1000 or fewer"],
        "tune",
        recipe,
        "--sampler",
        "grid",
        "--space",
        f"train.batch_size=choice({many})",
        "--space",
        "optim.lr=choice(0.1,0.2,0.3,0.4)",
        "--out",
        tmp_path / "tu",
    )
    assert not (tmp_path / "tu").exists()
