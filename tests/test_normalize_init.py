"""data.normalize with init: (clfkit.train.init_weights.input_normalization): `init` takes the init
run's mean/std (the fine-tuning convention: the backbone learned on inputs normalized that
way), `auto` stays the train split's; a resume keeps what the run started with."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from clfkit.train.build import build_data, train_statistics
from clfkit.cli import cli
from clfkit.data import ImageSet
from clfkit.errors import RecipeError
from clfkit.run.checkpoint import load_checkpoint, save_checkpoint
from clfkit.train.init_weights import input_normalization
from clfkit.train.trainer import train
from conftest import extend_and_resume, tiny_recipe

INIT_MEAN, INIT_STD = [0.25, 0.5, 0.75], [0.1, 0.2, 0.3]


def _train_set(channels=3):
    g = torch.Generator().manual_seed(0)
    return ImageSet(
        torch.randint(0, 256, (20, channels, 8, 8), dtype=torch.uint8, generator=g),
        torch.zeros(20, dtype=torch.long),
    )


@pytest.fixture()
def init_file(tmp_path):
    """A checkpoint that records the input mean/std its model was trained with."""
    path = tmp_path / "init.pt"
    save_checkpoint(
        path,
        {"model": {}, "input": {"channels": 3, "image_size": [8, 8], "mean": INIT_MEAN, "std": INIT_STD}},
    )
    return path


def test_init_without_init_is_a_recipe_error_naming_the_field():
    with pytest.raises(RecipeError) as e:
        tiny_recipe(data__normalize="init")
    ((path, msg),) = e.value.problems
    assert path == "data.normalize" and "no init:" in msg
    assert all(v in msg for v in ("auto", "imagenet", "none", "mean"))


def test_cli_says_so_before_reading_data(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"name": "r", "model": "linear", "data": {"normalize": "init"}}))
    res = CliRunner().invoke(cli, ["train", str(recipe), "--out", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "data.normalize" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "runs").exists()


def test_init_takes_the_init_runs_statistics_and_auto_the_train_splits(init_file):
    mean, std, source = input_normalization(
        tiny_recipe(init=str(init_file), data__normalize="init"), _train_set()
    )
    assert (mean, std) == (INIT_MEAN, INIT_STD) and source == f"init run {init_file}"
    mean, std, source = input_normalization(tiny_recipe(init=str(init_file)), _train_set())
    assert source == "train split" and (mean, std) == train_statistics(_train_set()) and mean != INIT_MEAN


def test_grayscale_data_averages_an_rgb_inits_statistics(init_file):
    mean, std, _ = input_normalization(
        tiny_recipe(init=str(init_file), data__normalize="init"), _train_set(1)
    )
    assert mean == pytest.approx([0.5]) and std == pytest.approx([0.2])


def test_explicit_choices_ignore_init(init_file):
    mean, std, source = input_normalization(
        tiny_recipe(init=str(init_file), data__normalize="imagenet"), _train_set()
    )
    assert mean == [0.485, 0.456, 0.406] and source == "imagenet"
    mean, std, source = input_normalization(
        tiny_recipe(init=str(init_file), data__normalize={"mean": [0.5] * 3, "std": [0.25] * 3}), _train_set()
    )
    assert (mean, std, source) == ([0.5] * 3, [0.25] * 3, "recipe")


def test_an_init_without_statistics(tmp_path):
    bare = tmp_path / "bare.pt"
    save_checkpoint(bare, {"model": {}})
    with pytest.raises(RecipeError) as e:
        input_normalization(tiny_recipe(init=str(bare), data__normalize="init"), _train_set())
    ((path, msg),) = e.value.problems
    assert path == "data.normalize" and str(bare) in msg and "records none" in msg and "auto" in msg


def test_a_run_from_init_uses_and_records_its_statistics_and_resume_keeps_them(trained_run, tmp_path, capsys):
    init_mean = load_checkpoint(trained_run.run_dir / "best.pt")["input"]["mean"]
    init = tmp_path / "init.pt"
    shutil.copy(trained_run.run_dir / "best.pt", init)
    # other data than the init run's (another seed and size): its own mean differs
    recipe = tiny_recipe(
        init=str(init),
        data__normalize="init",
        seed=1,
        train__epochs=1,
        data__source__train_size=64,
        data__source__val_size=16,
        data__source__test_size=16,
    )
    res = train(recipe, tmp_path / "runs", quiet=False)
    assert res.summary["normalize"]["mean"] == init_mean
    assert res.summary["normalize"]["from"] == f"init run {init}"
    assert f"normalize (init run {init}): mean" in capsys.readouterr().out
    model = load_checkpoint(res.run_dir / "best.pt")["model"]
    assert torch.allclose(model["mean"].flatten(), torch.tensor(init_mean) * 255)
    own_mean, _ = train_statistics(build_data(recipe).train)  # what `auto` would use: counted
    assert max(abs(a - b) for a, b in zip(own_mean, init_mean)) > 1e-3
    init.unlink()  # a resume needs no init run: last.pt holds the statistics it started with
    resumed = extend_and_resume(res.run_dir, 2)
    assert resumed.summary["normalize"] == res.summary["normalize"]
