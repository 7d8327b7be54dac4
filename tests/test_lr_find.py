"""clfkit lr-find: the LR range test through the CLI; it writes its plot and nothing else."""
from __future__ import annotations

import re

import numpy as np
from conftest import invoke, refused, tiny_recipe_file


def test_lr_find_writes_only_its_plot_and_suggests_an_lr(tmp_path, monkeypatch):
    recipe = tiny_recipe_file(tmp_path, data__source__train_size=128)
    monkeypatch.chdir(tmp_path)
    code, out = invoke("lr-find", recipe, "--steps", "40", "--end-lr", "100")
    assert code == 0, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr_find_tiny.png", "tiny.yaml"]  # no run folder
    assert (tmp_path / "lr_find_tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lr = float(re.search(r"suggested lr: (\S+) \(steepest descent", out).group(1))
    assert 1e-7 < lr < 100 and f"--set optim.lr={lr:.2e}" in out
    # an earlier plot is replaced; a folder gets the default name inside it
    assert invoke("lr-find", recipe, "--steps", "10", "-o", tmp_path / "lr_find_tiny.png")[0] == 0
    (tmp_path / "plots").mkdir()
    assert invoke("lr-find", recipe, "--steps", "10", "-o", tmp_path / "plots")[0] == 0
    assert (tmp_path / "plots" / "lr_find_tiny.png").is_file()


def test_lr_find_never_overwrites_what_is_not_a_plot(tmp_path, trained_run):
    recipe = tiny_recipe_file(tmp_path)
    notes = tmp_path / "notes.png"
    notes.write_text("my notes, not a picture")
    refused(["notes.png", "not a PNG"], "lr-find", recipe, "-o", notes)
    assert notes.read_text() == "my notes, not a picture"
    refused([".png"], "lr-find", recipe, "-o", tmp_path / "recipe.yaml")
    refused(["does not exist"], "lr-find", recipe, "-o", tmp_path / "nowhere" / "x.png")
    refused(["run folder"], "lr-find", recipe, "-o", trained_run.run_dir / "lr.png")
    assert not (trained_run.run_dir / "lr.png").exists()
    refused(["--start-lr"], "lr-find", recipe, "--start-lr", "1", "--end-lr", "0.1", "-o", tmp_path / "a.png")


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    from clfkit.studies.lr_find import suggestions

    lrs = list(np.logspace(-6, 1, 71))
    x = np.log10(lrs)
    # flat, a descent steepest at lr 1e-3, a minimum at 1e-1, then divergence (steeper swings after it)
    loss = list(2 - np.tanh((x + 3) * 2) + np.where(x > -1, 30 * (x + 1) ** 2 * (1.5 + np.sin(20 * x)), 0))
    steepest, min10 = suggestions(lrs, loss)
    assert abs(np.log10(steepest) + 3) <= 0.1
    assert min10 == lrs[int(np.argmin(loss))] / 10
