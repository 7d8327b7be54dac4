"""Per-run reports, clfkit eval, EMA, early stopping and metrics logs."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clfkit.errors import DataError
from clfkit.run.evaluation import eval_run
from conftest import tiny_recipe, write_image_folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_run_writes_reports(trained_run):
    run, summary = trained_run.run_dir, trained_run.summary
    for png in ("curves.png", "confusion.png"):
        with Image.open(run / png) as im:
            im.verify()
    rows = read_csv(run / "per_class.csv")
    assert [r["class"] for r in rows] == summary["class_names"]
    assert {r["split"] for r in rows} == {"test"}
    assert sum(int(r["support"]) for r in rows) == summary["test_images"]
    for r, s in zip(rows, summary["per_class"]):
        assert float(r["accuracy"]) == pytest.approx(s["accuracy"], abs=1e-6)
    metrics = read_csv(run / "metrics.csv")
    assert [int(m["epoch"]) for m in metrics] == list(range(1, summary["epochs"] + 1))
    assert summary["eval_split"] == "test" and summary["epochs_run"] == summary["epochs"]


def test_eval_recomputes_the_test_numbers(trained_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_run.run_dir, run)
    (run / "per_class.csv").unlink()
    res = eval_run(run)
    assert res.split == "test"
    assert res.acc == pytest.approx(trained_run.summary["test_acc"], abs=1e-6)
    assert (run / "per_class.csv").is_file() and (run / "eval_test.json").is_file()
    val = eval_run(run, split="val")
    assert val.acc == pytest.approx(trained_run.summary["best_val_acc"], abs=1e-6)
    assert {r["split"] for r in read_csv(run / "per_class.csv")} == {"val"}

    from clfkit.cli import cli

    out = CliRunner().invoke(cli, ["eval", str(run), "--split", "test"])
    assert out.exit_code == 0, out.output
    assert f"test: accuracy {trained_run.summary['test_acc']:.4f}" in out.output


def test_val_split_when_no_labelled_test_and_data_root(tmp_path):
    from clfkit.recipe import validate_recipe
    from clfkit.train.trainer import train

    root = write_image_folder(tmp_path / "imgs", per_class=10, size=16)
    shutil.rmtree(root / "test")
    recipe = validate_recipe(
        {
            "name": "folders",
            "data": {"source": {"name": "folder", "root": str(root)}, "image_size": 16, "val_fraction": 0.3},
            "model": {"name": "cnn", "blocks": [{"channels": 4, "pool": "max"}]},
            "optim": {"name": "adam", "lr": 1e-2},
            "train": {"epochs": 2, "batch_size": 4},
        }
    )
    res = train(recipe, tmp_path / "runs", quiet=True)
    assert res.summary["eval_split"] == "val" and res.summary["test_acc"] is None
    assert {r["split"] for r in read_csv(res.run_dir / "per_class.csv")} == {"val"}
    assert (res.run_dir / "confusion.png").is_file()
    with pytest.raises(DataError, match="no labelled test split"):
        eval_run(res.run_dir, split="test")
    # the data moved: --data-root reads it from the new place, same val hold-out
    moved = tmp_path / "moved"
    shutil.move(str(root), moved)
    again = eval_run(res.run_dir, data_root=moved)
    assert again.split == "val" and again.images == res.summary["val_images"]


def test_data_root_needs_a_folder_dataset(trained_run, tmp_path):
    with pytest.raises(DataError, match="not read from a folder"):
        eval_run(trained_run.run_dir, data_root=tmp_path)


def test_ema_weights_are_validated_and_kept(tmp_path):
    from clfkit.run.checkpoint import load_checkpoint
    from clfkit.train.trainer import train

    res = train(tiny_recipe(train__epochs=2, train__ema={"decay": 0.9}), tmp_path, quiet=True)
    last = load_checkpoint(res.run_dir / "last.pt")
    ema, raw = last["extra"]["ema"], last["model"]
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    best = load_checkpoint(res.run_dir / "best.pt")["model"]
    if res.summary["best_epoch"] == 2:  # best.pt holds the averaged weights of that epoch
        assert all(torch.equal(best[k], ema[k]) for k in ema)
    assert res.summary["ema"] is True
    # the test accuracy is that of best.pt (the averaged weights)
    assert eval_run(res.run_dir).acc == pytest.approx(res.summary["test_acc"], abs=1e-6)


def test_early_stopping_stops_and_keeps_its_state(tmp_path):
    from clfkit.run.checkpoint import load_checkpoint
    from clfkit.train.trainer import train

    # a learning rate too small to change anything: val acc is flat, so patience 1 stops at epoch 2
    recipe = tiny_recipe(
        train__epochs=6,
        optim={"name": "sgd", "lr": 1e-12},
        train__early_stopping={"patience": 1, "metric": "val_acc"},
    )
    res = train(recipe, tmp_path, quiet=True)
    assert res.summary["epochs_run"] == 2 and res.summary["stopped_early_at"] == 2
    state = load_checkpoint(res.run_dir / "last.pt")["extra"]["early_stopping"]
    assert state["waited"] == 1 and state["best_epoch"] == 1 and state["stopped_epoch"] == 2
    assert len(read_csv(res.run_dir / "metrics.csv")) == 2


def test_early_stopper_unit():
    from clfkit.errors import TrainingError
    from clfkit.train.engine.stopping import EarlyStopper

    s = EarlyStopper(metric="val_loss", patience=2, min_delta=0.01, has_val=True)
    assert not s.update({"epoch": 1, "val_loss": 1.0})
    assert not s.update({"epoch": 2, "val_loss": 0.995})  # not better by more than min_delta
    saved = s.state_dict()
    s2 = EarlyStopper(metric="val_loss", patience=2, min_delta=0.01, has_val=True)
    s2.load_state_dict(saved)
    assert s2.update({"epoch": 3, "val_loss": 0.999}) and s2.stopped_epoch == 3 and s2.best_epoch == 1
    with pytest.raises(TrainingError, match="no validation split"):
        EarlyStopper(metric="val_acc", patience=5, min_delta=0.0, has_val=False)


def test_recipe_switches():
    r = tiny_recipe(train__ema=True, train__early_stopping=True)
    assert r.train.ema.decay == 0.999 and r.train.early_stopping.patience == 5
    assert tiny_recipe(train__ema=False).train.ema is None
    from clfkit.errors import RecipeError

    with pytest.raises(RecipeError, match="did you mean 'patience'"):
        tiny_recipe(train__early_stopping={"patiense": 3})


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from clfkit.train.trainer import train

    res = train(tiny_recipe(train__epochs=1), tmp_path, quiet=True)
    assert list((res.run_dir / "tensorboard").glob("events.out.tfevents.*"))
