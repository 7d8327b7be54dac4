"""The one name rule (clfkit.util.safe_names): run, sweep and trial names that cannot safely
be folder names are refused before anything is written; grid values become safe labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_cases import TINY, clear_error, write
from cli_cases import cli_result as invoke

from clfkit.studies.sweep import plan_sweep


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
