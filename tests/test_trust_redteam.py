"""Issue 11, red-team variants through the real CLI that the first passes did not cover:
`clfkit tune` continuing a study under another recipe / --set, a --set on a searched field,
a continued study redrawing the first run's values, and a --checkpoint path into another run
whose suggested command pointed at a folder that does not exist."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from conftest import invoke, refused, tiny_recipe


@pytest.fixture
def tune_recipe(tmp_path) -> Path:
    data = tiny_recipe(train__epochs=1, data__image_size=8).to_dict()
    data["data"]["source"].update(train_size=64, val_size=32, test_size=32)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


SPACE = "optim.lr=uniform(1e-3,1e-2)"


def _tune(recipe: Path, out: Path, trials: int, *extra) -> tuple[int, str]:
    return invoke("tune", recipe, "--trials", trials, "--space", SPACE, "--out", out, "--quiet",
                  "--pruner", "none", *extra)


def test_tune_refuses_to_continue_a_study_under_another_recipe(tune_recipe, tmp_path):
    pytest.importorskip("optuna")
    out = tmp_path / "t"
    assert _tune(tune_recipe, out, 1)[0] == 0
    table = (out / "trials.csv").read_bytes()
    # before: trials trained with another --set joined the study; best.yaml mixed the two
    refused(["study.db", "another recipe or --set", "train.epochs", "another --out"],
            "tune", tune_recipe, "--trials", 2, "--space", SPACE, "--out", out, "--quiet",
            "--pruner", "none", "--set", "train.epochs=2")
    assert (out / "trials.csv").read_bytes() == table
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-000"]
    # the same recipe and --set continue it, with values not redrawn from the first run's seed
    assert _tune(tune_recipe, out, 2)[0] == 0
    with open(out / "trials.csv", newline="") as f:
        lrs = [row["optim.lr"] for row in csv.DictReader(f)]
    assert len(lrs) == 2 and lrs[0] != lrs[1], lrs


@pytest.mark.parametrize("space", [SPACE, "optim=choice(adam,sgd)"])
def test_tune_refuses_a_set_on_a_searched_field(tune_recipe, tmp_path, space):
    pytest.importorskip("optuna")
    out = tmp_path / "t"
    # before: the --set was silently replaced by every trial's value
    refused(["--set optim.lr", "searched", space], "tune", tune_recipe, "--trials", 1, "--space", space,
            "--set", "optim.lr=0.5", "--out", out)
    assert not out.exists()


def test_checkpoint_path_elsewhere_names_the_real_run(tmp_path, monkeypatch):
    # the name is checked before any checkpoint is read, so stand-in files do
    run, other = tmp_path / "a", tmp_path / "b"
    for folder in (run, other):
        folder.mkdir()
        (folder / "best.pt").write_bytes(b"stand-in")
    monkeypatch.chdir(tmp_path)
    # before: a path relative to the working folder that is no file got a command for a folder
    # that does not exist (/tmp/.../zz); now it says there is no such file
    out = refused(["not in the run folder", "no such file"], "eval", "a", "--checkpoint", "../zz/best.pt")
    assert "clfkit eval /" not in out
    # a path relative to the run folder (as ../a/best.pt is accepted) names that run
    refused(["not in the run folder", f"clfkit export {other.resolve()}"],
            "export", "a", "--checkpoint", "../b/best.pt")
    assert (run / "best.pt").read_bytes() == b"stand-in"


@pytest.mark.parametrize("existing", ["recipe.yaml", "notes.md", "other.json"])
def test_predict_never_replaces_a_file_it_did_not_write(trained_run, tmp_path, existing):
    """-o over an existing recipe, note or JSON is a mistyped argument, not a predictions file:
    refused with the file unchanged (an earlier test.txt/.csv is replaced as before)."""
    from clfkit.deploy.export import export_run
    from conftest import write_image_folder

    model = export_run(trained_run.run_dir, tmp_path / "m.onnx").path
    images = write_image_folder(tmp_path / "imgs", size=16) / "test"
    target = tmp_path / existing
    target.write_text("keep me")
    refused([existing, "only an earlier predictions file is replaced"], "predict", model, images, "-o", target)
    assert target.read_text() == "keep me"
    earlier = tmp_path / "old.txt"
    earlier.write_text("stale")
    code, out = invoke("predict", model, images, "-o", earlier)
    assert code == 0 and earlier.read_text() != "stale", out


def test_min_agreement_is_a_percentage_of_the_int8_export(trained_run, tmp_path):
    code, out = invoke("export", trained_run.run_dir, "-o", tmp_path / "a.onnx", "--int8", "--min-agreement", "150")
    assert code == 2 and "150" in out and "0<=x<=100" in out.replace(" ", ""), out
    refused(["--min-agreement", "--int8"], "export", trained_run.run_dir, "-o", tmp_path / "b.onnx",
            "--min-agreement", "50")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
