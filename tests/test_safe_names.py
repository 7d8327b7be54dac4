"""The one name rule (clfkit.util.safe_names): run, sweep and trial names that cannot safely
be folder names are refused before anything is written; grid values become safe labels.
"""

from __future__ import annotations

from clfkit.cli import cli
from clfkit.studies.sweep import plan_sweep
from click.testing import CliRunner
from pathlib import Path
import pytest
import yaml


TINY = {
    "name": "tiny",
    "data": {
        "source": {"name": "shapes", "num_classes": 2, "train_size": 64, "val_size": 16, "test_size": 16},
        "image_size": 8,
    },
    "model": "linear",
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 1, "batch_size": 16},
}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def clear_error(result, *words: str) -> str:
    """Exit 2, `error: ...` naming the words, no traceback."""
    text = result.output
    assert result.exit_code == 2, text
    assert "Traceback" not in text and not isinstance(result.exception, (AssertionError, TypeError)), text
    for w in words:
        assert w in text, (w, text)
    return text


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- row 1: names
BAD_NAMES = [
    "..",
    ".",
    "a/b",
    "../up",
    "/abs",
    "a\\b",
    "",
    "-x",
    ".hidden",
    "a b",
    "tab\tname",
    "nul\x00",
    "é",
    "x" * 201,
    "a:b",
    "*",
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_run_name_refused_before_anything_is_written(tmp_path, bad):
    recipe = write(tmp_path / "r.yaml", {**TINY, "name": bad})
    out = tmp_path / "runs"
    clear_error(invoke("train", recipe, "--out", out), "name", "may only hold", "letters, digits")
    assert not out.exists()


@pytest.mark.parametrize("where", ["variant", "label"])
@pytest.mark.parametrize("bad", ["..", ".", "a/b", "/abs", "-x", "a b", "é", "x" * 201], ids=repr)
def test_bad_sweep_names_refused_before_anything_is_written(tmp_path, bad, where):
    block = {"variants": {bad: {}, "ok": {}}} if where == "variant" else {"optim.lr": {bad: 0.1, "ok": 0.2}}
    recipe = write(tmp_path / "r.yaml", {**TINY, "sweep": block})
    (tmp_path / "keep.txt").write_text("precious")
    before = tree(tmp_path)
    clear_error(invoke("sweep", recipe, "--out", tmp_path / "sw"), "may only hold")
    assert tree(tmp_path) == before  # no sweep folder, nothing deleted


def test_grid_values_that_are_not_names_get_safe_labels(tmp_path):
    recipe = write(tmp_path / "r.yaml", TINY)
    sweep = plan_sweep(recipe, ["description=../x,/etc,a b,c*d"], out=tmp_path / "sw")
    for t in sweep.trials:
        assert t.run_dir.parent == tmp_path / "sw" and "/" not in t.name and t.name.startswith("description=")
    assert [t.recipe.description for t in sweep.trials] == ["../x", "/etc", "a b", "c*d"]
