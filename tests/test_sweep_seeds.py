"""Sweeps over seeds: mean +- sd and a 95% interval per variant, Welch's verdict, the sweep
report page with curves and per-class deltas, through the CLI."""
from __future__ import annotations

import csv
import math

import pytest
import yaml
from conftest import invoke, refused, tiny_recipe

SMALL = {"data__source__train_size": 96, "data__source__val_size": 32, "data__source__test_size": 32, "train__epochs": 2}


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
    code, out = invoke("sweep", recipe, "--grid", "optim.lr=1e-6,3e-3", "--seeds", "2", "--out", tmp_path / "sw",
                       "--quiet")
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
        assert float(r["val_acc_ci95_high"]) == pytest.approx(mean + half, abs=1e-4)
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "baseline (lr=1e-6)" in page or "the baseline (lr=1e-6" in page


def test_statistics():
    from clfkit.studies.sweep.seeds import mean_sd_ci, welch_p

    s = mean_sd_ci([1.0, 2.0, 3.0])
    assert s["mean"] == 2 and s["sd"] == 1 and s["ci_high"] == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-4)
    assert mean_sd_ci([0.5])["sd"] is None and mean_sd_ci([])["mean"] is None
    assert welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and welch_p([0.5, 0.5], [0.7, 0.7]) == 0.0
    assert welch_p([0.1, 0.2, 0.15], [0.8, 0.9, 0.85]) < 0.05
    assert welch_p([0.5], [0.5, 0.6]) is None


def test_bad_seed_settings_are_refused(tmp_path):
    refused(["sweep.seeds", "whole number"], "sweep", _recipe(tmp_path / "a.yaml", {"seeds": "three", "optim.lr": [1e-3]}))
    refused(["sweep.seeds"], "sweep", _recipe(tmp_path / "b.yaml", {"seeds": 0}))
    refused(["--seeds", "seed"], "sweep", _recipe(tmp_path / "c.yaml"), "--grid", "seed=1,2", "--seeds", "2")
    code, out = invoke("sweep", _recipe(tmp_path / "d.yaml"), "--seeds", "0")
    assert code == 2 and "--seeds" in out
    refused(["nothing to sweep", "--seeds"], "sweep", _recipe(tmp_path / "e.yaml"))
