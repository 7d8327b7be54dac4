"""Sweep plans (clfkit.studies.sweep.plan): dotted path keys, component and field axes and
their labels, conflicting axes, --set on top of swept components, and cleanup that never
leaves the sweep folder.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from cli_cases import TINY, clear_error, write
from cli_cases import cli_result as invoke

from clfkit.studies.sweep import plan_sweep


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sweep_path_keys_are_dotted_paths(tmp_path):
    recipe = write(tmp_path / "r.yaml", {**TINY, "sweep": {"../optim": [1, 2]}})
    clear_error(invoke("sweep", recipe, "--out", tmp_path / "sw"), "'../optim'", "dotted.path")
    assert not (tmp_path / "sw").exists()


def test_sweep_cleanup_never_deletes_outside_the_sweep_folder(tmp_path):
    from clfkit.errors import ClfkitError
    from clfkit.recipe import validate_recipe
    from clfkit.studies.sweep import run_trial

    recipe = validate_recipe(dict(TINY)).to_dict()
    sweep_dir = tmp_path / "sw"
    sweep_dir.mkdir()
    (tmp_path / "keep.txt").write_text("precious")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "recipe.yaml").write_text("looks like a run")
    (sweep_dir / "link").symlink_to(outside)
    before = tree(tmp_path)
    for run_dir in (sweep_dir / "..", sweep_dir / "link", Path(str(sweep_dir)) / "."):
        with pytest.raises(ClfkitError, match="not a clfkit run folder|may only hold|not a folder directly"):
            run_trial(recipe, str(run_dir))
    assert tree(tmp_path) == before


def test_set_and_grid_give_the_same_recipe(tmp_path):
    recipe = write(tmp_path / "r.yaml", TINY)
    via_grid = plan_sweep(recipe, ["optim.lr=1e-3,.5"], out=tmp_path / "sw")
    for trial, text in zip(via_grid.trials, ("1e-3", ".5")):
        from clfkit.recipe import load_recipe

        assert load_recipe(recipe, [f"optim.lr={text}"]).optim == trial.recipe.optim
        assert isinstance(trial.recipe.optim["lr"], float)


# --------------------------------------------------------------------------- row 15: overlapping axes
def saved(run: Path) -> dict:
    return yaml.safe_load((run / "recipe.yaml").read_text())


@pytest.mark.parametrize("order", ["component_first", "field_first", "from_file"])
def test_component_and_field_axes_merge_and_labels_tell_the_truth(tmp_path, order):
    grid = ["optim=sgd,adam", "optim.lr=1e-2,1e-3"]
    data = dict(TINY)
    if order == "field_first":
        grid.reverse()
    elif order == "from_file":
        data["sweep"] = {"optim": {"sgd": "sgd", "adam": {"name": "adam"}}}
        grid = grid[1:]
    recipe = write(tmp_path / "r.yaml", data)
    out = tmp_path / "sw"
    result = invoke("sweep", recipe, "--out", out, "--quiet", *[a for g in grid for a in ("--grid", g)])
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 4
    for run in runs:
        label = dict(part.split("=") for part in run.name.split(","))
        rec = saved(run)
        assert rec["optim"]["name"] == label["optim"]
        assert rec["optim"]["lr"] == float(label["lr"])


@pytest.mark.parametrize(
    "grid, block, words",
    [
        (["optim.lr=1e-2", "optim.lr=1e-3"], None, ["--grid optim.lr is given twice"]),
        (
            ["optim.lr=1e-2,1e-3"],
            {"variants": {"a": {"optim.lr": 0.3}, "b": {}}},
            ["'variant'", "'optim.lr'", "both set optim.lr"],
        ),
        (
            ["optim={name: sgd, lr: 0.5},adam", "optim.lr=1e-2,1e-3"],
            None,
            ["axis 'optim'", "sets lr", "'optim.lr' sweeps optim.lr"],
        ),
        (
            ["optim.lr=1e-2,1e-3"],
            {"variants": {"a": {"optim": {"name": "adam", "lr": 0.3}}, "b": {}}},
            ["axis 'variant'", "sets lr"],
        ),
    ],
)
def test_conflicting_axes_are_refused_naming_both(tmp_path, grid, block, words):
    recipe = write(tmp_path / "r.yaml", {**TINY, **({"sweep": block} if block else {})})
    args = [a for g in grid for a in ("--grid", g)]
    clear_error(invoke("sweep", recipe, "--out", tmp_path / "sw", *args), *words)
    assert not (tmp_path / "sw").exists()


def test_set_field_applies_on_top_of_each_swept_component(tmp_path):
    recipe = write(tmp_path / "r.yaml", TINY)
    sweep = plan_sweep(recipe, ["optim=sgd,adam"], ["optim.lr=0.05"], out=tmp_path / "sw")
    assert [(t.recipe.optim["name"], t.recipe.optim["lr"]) for t in sweep.trials] == [
        ("sgd", 0.05),
        ("adam", 0.05),
    ]
    swept = plan_sweep(recipe, ["optim.lr=0.2,0.3"], ["optim.lr=0.05"], out=tmp_path / "sw")
    assert [t.recipe.optim["lr"] for t in swept.trials] == [0.2, 0.3]  # the swept value wins


# --------------------------------------------------------------------------- rows 12, 16: plugins
@pytest.fixture
def site(tmp_path, monkeypatch):
    """Throwaway plugin distributions on sys.path (as tests/test_plugins.py makes them)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv("CLFKIT_PLUGINS", raising=False)
    tag = f"t{abs(hash(str(tmp_path))) % 10**8}"

    def make(dist: str, code: str) -> None:
        module = f"{dist.replace('-', '_')}_{tag}"
        (folder / f"{module}.py").write_text(textwrap.dedent(code))
        info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[clfkit.plugins]\n{dist} = {module}\n")

    return make
