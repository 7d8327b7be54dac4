"""Issue 11, names / parsers / signals / plugins: every misuse is a clear error with nothing
written or deleted, and what a run is called is what it trained with.

Rows: 1 (one name rule), 5 (Ctrl-C / SIGTERM during a sweep), 7 (alias bombs), 8 (duplicate
keys), 12 (plugins that exit), 14 (one value parser), 15 (overlapping grid axes), 16
(CLFKIT_PLUGINS names), 19 (huge ints, --set into list items, a model too large to build).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from clfkit import registry
from clfkit.cli import cli
from clfkit.recipe import parse_override, read_yaml
from clfkit.registry import Registry
from clfkit.sweep import plan_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "data": {"source": {"name": "shapes", "num_classes": 2, "train_size": 64, "val_size": 16,
                        "test_size": 16}, "image_size": 8},
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
BAD_NAMES = ["..", ".", "a/b", "../up", "/abs", "a\\b", "", "-x", ".hidden", "a b", "tab\tname",
             "nul\x00", "é", "x" * 201, "a:b", "*"]


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


def test_sweep_path_keys_are_dotted_paths(tmp_path):
    recipe = write(tmp_path / "r.yaml", {**TINY, "sweep": {"../optim": [1, 2]}})
    clear_error(invoke("sweep", recipe, "--out", tmp_path / "sw"), "'../optim'", "dotted.path")
    assert not (tmp_path / "sw").exists()


def test_grid_values_that_are_not_names_get_safe_labels(tmp_path):
    recipe = write(tmp_path / "r.yaml", TINY)
    sweep = plan_sweep(recipe, ["description=../x,/etc,a b,c*d"], out=tmp_path / "sw")
    for t in sweep.trials:
        assert t.run_dir.parent == tmp_path / "sw" and "/" not in t.name and t.name.startswith("description=")
    assert [t.recipe.description for t in sweep.trials] == ["../x", "/etc", "a b", "c*d"]


def test_sweep_cleanup_never_deletes_outside_the_sweep_folder(tmp_path):
    from clfkit.errors import ClfkitError
    from clfkit.recipe import validate_recipe
    from clfkit.sweep import run_trial

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


# --------------------------------------------------------------------------- rows 7, 8: YAML
def bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_in_recipe_sweep_file_and_set_is_short_and_fast(tmp_path):
    recipe = write(tmp_path / "r.yaml", "name: tiny\nmodel: linear\n" + bomb())
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="alias bomb"):
        read_yaml(recipe)
    assert time.perf_counter() - t0 < 1.0
    for args in (("recipe", "check", recipe), ("train", recipe, "--out", tmp_path / "runs"),
                 ("sweep", recipe, "--grid", "seed=0,1", "--out", tmp_path / "sw")):
        text = clear_error(invoke(*args), "alias bomb", "anchors")
        assert len(text) < 600
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sw").exists()
    good = write(tmp_path / "g.yaml", TINY)
    bomb_value = "{" + bomb().replace("\n", ", ").rstrip(", ") + "}"
    text = clear_error(invoke("recipe", "check", good, "--set", f"description={bomb_value}"), "alias bomb")
    assert len(text) < 600


def test_anchors_within_budget_still_work_and_are_not_shared(tmp_path):
    text = yaml.safe_dump(TINY, sort_keys=False) + "x: &opt {name: sgd, lr: 0.5}\n"
    data = read_yaml(write(tmp_path / "r.yaml", text.replace("x:", "_x:")))
    assert data["_x"] == {"name": "sgd", "lr": 0.5}


@pytest.mark.parametrize("text, key, lines", [
    ("name: a\nmodel: linear\nname: b\n", "name", (1, 3)),
    ("name: a\nmodel: linear\noptim:\n  name: sgd\n  lr: 0.1\n  lr: 0.2\n", "lr", (5, 6)),
    ("name: a\nmodel: linear\ndata:\n  augment:\n  - {name: PadCrop, pad: 2, pad: 3}\n", "pad", (5, (21, 29))),
    ("name: a\nmodel: linear\nsweep:\n  optim.lr: [1, 2]\n  optim.lr: [3]\n", "optim.lr", (4, 5)),
    ("name: a\nmodel: linear\nsweep:\n  variants:\n    v: {seed: 1}\n    v: {seed: 2}\n", "v", (5, 6)),
])
def test_duplicate_key_names_key_and_both_lines(tmp_path, text, key, lines):
    recipe = write(tmp_path / "r.yaml", text)
    cmd = ("sweep", recipe, "--out", tmp_path / "sw") if "sweep:" in text else ("recipe", "check", recipe)
    line, other = lines  # other: the second line, or both columns when the two are on one line
    where = f"line {line} (columns {other[0]} and {other[1]})" if isinstance(other, tuple) else f"line {line} and on line {other}"
    clear_error(invoke(*cmd), f"key {key!r} is given twice", where)
    assert not (tmp_path / "sw").exists()


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "base: &b {name: sgd, lr: 0.1}\noptim:\n  <<: *b\n  lr: 0.2\n"
    assert read_yaml(write(tmp_path / "r.yaml", text))["optim"] == {"name": "sgd", "lr": 0.2}


# --------------------------------------------------------------------------- row 14: one value parser
VALUES = [("1e-3", 0.001), ("1E5", 100000.0), ("-2.5e-4", -0.00025), (".5", 0.5), ("1.", 1.0),
          ("1_000", 1000), ("0x10", 16), ("0o10", 8), ("010", 10), ("7", 7), ("-3", -3),
          ("on", "on"), ("no", "no"), ("yes", "yes"), ("off", "off"), ("y", "y"), ("true", True),
          ("False", False), ("1:30", "1:30"), ("null", None), ("~", None), ("none", "none"),
          ("sgd", "sgd"), ("[1e-3, 2]", [0.001, 2]), ("{name: sgd, lr: 1e-2}", {"name": "sgd", "lr": 0.01})]


def test_same_text_same_value_in_set_grid_and_sweep_file(tmp_path):
    """Each text through --set, --grid and a sweep file's list (the description field takes
    any value before validation, so the parsed value is read back from the plan)."""
    for text, expected in VALUES:
        via_set = parse_override(f"x={text}")[1]
        (via_grid,) = [o for _, o in plan_sweep_axes(tmp_path, grid=[f"description={text}"])]
        (via_file,) = [o for _, o in plan_sweep_axes(tmp_path, block=f"  description: [{text}]\n")]
        for got in (via_set, via_grid, via_file):
            assert got == expected and type(got) is type(expected), (text, got, expected)


def plan_sweep_axes(tmp_path: Path, grid: list[str] = (), block: str = "") -> list[tuple[str, object]]:
    """(label, value) of the one axis planned from a --grid or a sweep-file block, read
    without validating the recipes (values of any type go in)."""
    from clfkit.sweep import axes_from_block, parse_grid

    if grid:
        axis = parse_grid(grid[0])
    else:
        path = write(tmp_path / "s.yaml", "name: t\nmodel: linear\nsweep:\n" + block)
        axis = axes_from_block(read_yaml(path)["sweep"], str(path))[0]
    return [(label, o["description"]) for label, o in axis.options]


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


@pytest.mark.parametrize("grid, block, words", [
    (["optim.lr=1e-2", "optim.lr=1e-3"], None, ["--grid optim.lr is given twice"]),
    (["optim.lr=1e-2,1e-3"], {"variants": {"a": {"optim.lr": 0.3}, "b": {}}},
     ["'variant'", "'optim.lr'", "both set optim.lr"]),
    (["optim={name: sgd, lr: 0.5},adam", "optim.lr=1e-2,1e-3"], None,
     ["axis 'optim'", "sets lr", "'optim.lr' sweeps optim.lr"]),
    (["optim.lr=1e-2,1e-3"], {"variants": {"a": {"optim": {"name": "adam", "lr": 0.3}}, "b": {}}},
     ["axis 'variant'", "sets lr"]),
])
def test_conflicting_axes_are_refused_naming_both(tmp_path, grid, block, words):
    recipe = write(tmp_path / "r.yaml", {**TINY, **({"sweep": block} if block else {})})
    args = [a for g in grid for a in ("--grid", g)]
    clear_error(invoke("sweep", recipe, "--out", tmp_path / "sw", *args), *words)
    assert not (tmp_path / "sw").exists()


def test_set_field_applies_on_top_of_each_swept_component(tmp_path):
    recipe = write(tmp_path / "r.yaml", TINY)
    sweep = plan_sweep(recipe, ["optim=sgd,adam"], ["optim.lr=0.05"], out=tmp_path / "sw")
    assert [(t.recipe.optim["name"], t.recipe.optim["lr"]) for t in sweep.trials] == [("sgd", 0.05), ("adam", 0.05)]
    swept = plan_sweep(recipe, ["optim.lr=0.2,0.3"], ["optim.lr=0.05"], out=tmp_path / "sw")
    assert [t.recipe.optim["lr"] for t in swept.trials] == [0.2, 0.3]  # the swept value wins


# --------------------------------------------------------------------------- row 5: signals in a sweep
SLOW = {**TINY, "name": "slow", "model": {"name": "mlp", "hidden": [64]},
        "data": {**TINY["data"], "source": {**TINY["data"]["source"], "train_size": 128}},
        "train": {"epochs": 500, "batch_size": 16}}


@pytest.mark.parametrize("jobs, sig, code, group", [("1", signal.SIGINT, 130, False), ("2", signal.SIGTERM, 143, False),
                                                     ("2", signal.SIGINT, 130, True)])
def test_signal_stops_the_whole_sweep_resumable(tmp_path, jobs, sig, code, group):
    """group: Ctrl-C in a terminal, to every process (red team 19: with --jobs 2 a worker whose
    run stopped took the next queued run before the parent's stop reached it, and started it)."""
    recipe = write(tmp_path / "slow.yaml", SLOW)
    out = tmp_path / "sw"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLFKIT_PLUGINS": "none"}
    cmd = [sys.executable, "-m", "clfkit", "sweep", str(recipe), "--out", str(out), "--jobs", jobs,
           "--grid", "optim.lr=0.01,0.02,0.03"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=tmp_path, start_new_session=group)
    deadline = time.time() + 120
    while not list(out.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until a run has trained an epoch
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    t0 = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    assert time.time() - t0 < 60, output
    assert "Traceback" not in output
    assert "run the same `clfkit sweep` command again" in output and signal.Signals(sig).name in output
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert 1 <= len(runs) <= int(jobs), output  # no queued run started
    for run in runs:  # each stopped run can resume
        assert (run / "last.pt").is_file() and not (run / "summary.json").exists(), output
    assert (out / "sweep.md").is_file()


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


GOOD = """
    import torch.nn as nn
    from clfkit.registry import register

    @register("norm", "acme_identity")
    def acme_identity(num_features: int, dim: int = 2) -> nn.Module:
        return nn.Identity()
"""


@pytest.mark.parametrize("code, words", [
    ("import sys\nsys.exit()\n", "sys.exit(None)"),
    ("import sys\nsys.exit(3)\n", "sys.exit(3)"),
    ("raise SystemExit('bye')\n", "sys.exit('bye')"),
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt"),
    ("class Odd(BaseException): pass\nraise Odd('strange')\n", "Odd: strange"),
])
def test_plugin_that_exits_is_isolated_and_commands_keep_working(site, monkeypatch, tmp_path, caplog,
                                                                 code, words):
    site("acme-good", GOOD)
    site("acme-exits", code)
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    listing = invoke("plugins", "--kind", "norm")
    assert listing.exit_code == 0, listing.output
    assert "acme_identity" in listing.output and "broken plugin acme-exits" in listing.output
    assert words in listing.output
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    check = invoke("recipe", "check", write(tmp_path / "r.yaml", TINY))
    assert check.exit_code == 0 and "recipe OK" in check.output, check.output
    assert any(r.getMessage().startswith("warning: plugin acme-exits") for r in caplog.records)


def test_real_ctrl_c_while_a_plugin_loads_still_interrupts(site):
    site("acme-slow", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(2)\n")
    # Python's own handler, armed afresh. In long mixed runs this test sometimes did not see the
    # KeyboardInterrupt while no Python-level handler had leaked (the conftest guard checks that);
    # the suspect, not yet found, is a C-level SIGINT handler some earlier test's library leaves,
    # which getsignal() cannot see. This test is about clfkit's loader, given Python's handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            Registry().load()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_clfkit_plugins_names_what_to_load_and_unknown_names_are_listed(site, monkeypatch, tmp_path, caplog):
    site("acme-good", GOOD)
    site("acme-other", GOOD.replace("acme_identity", "acme_other"))
    monkeypatch.setenv("CLFKIT_PLUGINS", "acme_good")
    reg = Registry()
    reg.load()
    assert "acme_identity" in reg.names("norm") and "acme_other" not in reg.names("norm")
    monkeypatch.setenv("CLFKIT_PLUGINS", "acme-goood")
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    result = invoke("recipe", "check", write(tmp_path / "r.yaml", TINY))
    assert result.exit_code == 0, result.output
    (warning,) = [r.getMessage() for r in caplog.records if "CLFKIT_PLUGINS" in r.getMessage()]
    assert "CLFKIT_PLUGINS names 'acme-goood'" in warning
    assert "acme-good" in warning and "acme-other" in warning  # the installed ones
    monkeypatch.setattr(registry, "REGISTRY", Registry())
    listing = invoke("plugins")
    assert "broken plugin acme-goood" in listing.output and "installed:" in listing.output


# --------------------------------------------------------------------------- row 19: tracebacks
@pytest.mark.parametrize("override, words", [
    ("seed=12345678901234567890", ["seed", "does not fit in 64 bits"]),
    ("seed=4294967296", ["seed", "outside the valid seed range", "0 to 4294967295"]),
    ("seed=-1", ["seed", "outside the valid seed range", "0 to 4294967295"]),
    ("data.source.train_size=123456789012345678901234", ["data.source.train_size", "64 bits"]),
    ("data.normalize.mean.0.x=1", ["data.normalize.mean.0", "not a mapping or a list"]),
    ("data.augment.0.x.y=1", ["data.augment.0.x", "HorizontalFlip", "no argument 'x'"]),
    ("data.augment.5.p=1", ["data.augment.5", "out of range"]),
    ("name.0=x", ["name", "not a mapping or a list"]),
])
def test_bad_overrides_are_clear_errors(tmp_path, override, words):
    recipe = write(tmp_path / "r.yaml", {**TINY, "data": {**TINY["data"], "augment": ["HorizontalFlip"],
                                                          "normalize": {"mean": [0.5] * 3, "std": [1.0] * 3}}})
    for cmd in (("recipe", "check", recipe), ("train", recipe, "--out", tmp_path / "runs")):
        clear_error(invoke(*cmd, "--set", override), *words)
    assert not (tmp_path / "runs").exists()


def test_set_into_a_component_named_in_a_list(tmp_path):
    recipe = write(tmp_path / "r.yaml", {**TINY, "data": {**TINY["data"], "augment": ["HorizontalFlip"]}})
    result = invoke("recipe", "check", recipe, "--set", "data.augment.0.p=0.25")
    assert result.exit_code == 0 and "p: 0.25" in result.output, result.output


def test_model_too_large_is_refused_before_data_or_allocation(tmp_path, monkeypatch):
    big = {**TINY, "model": "mlp", "data": {**TINY["data"], "image_size": 4096}}
    recipe = write(tmp_path / "r.yaml", big)
    for cmd in (("recipe", "check", recipe), ("train", recipe, "--out", tmp_path / "runs"),
                ("sweep", recipe, "--grid", "seed=0,1", "--out", tmp_path / "sw")):
        t0 = time.perf_counter()
        clear_error(invoke(*cmd), "mlp for 3x4096x4096", "parameters", "GB", "CLFKIT_MAX_PARAMS")
        assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sw").exists()
    monkeypatch.setenv("CLFKIT_MAX_PARAMS", "100")  # the cap can be set
    clear_error(invoke("recipe", "check", write(tmp_path / "s.yaml", TINY)), "more than the cap of 100")
    monkeypatch.setenv("CLFKIT_MAX_PARAMS", "lots")
    clear_error(invoke("recipe", "check", write(tmp_path / "s.yaml", TINY)), "CLFKIT_MAX_PARAMS='lots'")
