"""The one YAML/value parser (clfkit.util.yaml_text): alias bombs stay short and fast, anchors
within budget work unshared, duplicate keys are named with both lines (merge keys are not
duplicates), and the same text means the same value in --set, --grid and a sweep file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from cli_cases import TINY, clear_error, write
from cli_cases import cli_result as invoke

from clfkit.recipe import parse_override, read_yaml


# --------------------------------------------------------------------------- rows 7, 8: YAML
def bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- row 14: one value parser
VALUES = [
    ("1e-3", 0.001),
    ("1E5", 100000.0),
    ("-2.5e-4", -0.00025),
    (".5", 0.5),
    ("1.", 1.0),
    ("1_000", 1000),
    ("0x10", 16),
    ("0o10", 8),
    ("010", 10),
    ("7", 7),
    ("-3", -3),
    ("on", "on"),
    ("no", "no"),
    ("yes", "yes"),
    ("off", "off"),
    ("y", "y"),
    ("true", True),
    ("False", False),
    ("1:30", "1:30"),
    ("null", None),
    ("~", None),
    ("none", "none"),
    ("sgd", "sgd"),
    ("[1e-3, 2]", [0.001, 2]),
    ("{name: sgd, lr: 1e-2}", {"name": "sgd", "lr": 0.01}),
]


def plan_sweep_axes(tmp_path: Path, grid: list[str] = (), block: str = "") -> list[tuple[str, object]]:
    """(label, value) of the one axis planned from a --grid or a sweep-file block, read
    without validating the recipes (values of any type go in)."""
    from clfkit.studies.sweep import axes_from_block, parse_grid

    if grid:
        axis = parse_grid(grid[0])
    else:
        path = write(tmp_path / "s.yaml", "name: t\nmodel: linear\nsweep:\n" + block)
        axis = axes_from_block(read_yaml(path)["sweep"], str(path))[0]
    return [(label, o["description"]) for label, o in axis.options]


def test_alias_bomb_in_recipe_sweep_file_and_set_is_short_and_fast(tmp_path):
    recipe = write(tmp_path / "r.yaml", "name: tiny\nmodel: linear\n" + bomb())
    t0 = time.perf_counter()
    with pytest.raises(Exception, match="alias bomb"):
        read_yaml(recipe)
    assert time.perf_counter() - t0 < 1.0
    for args in (
        ("recipe", "check", recipe),
        ("train", recipe, "--out", tmp_path / "runs"),
        ("sweep", recipe, "--grid", "seed=0,1", "--out", tmp_path / "sw"),
    ):
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


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("name: a\nmodel: linear\nname: b\n", "name", (1, 3)),
        ("name: a\nmodel: linear\noptim:\n  name: sgd\n  lr: 0.1\n  lr: 0.2\n", "lr", (5, 6)),
        (
            "name: a\nmodel: linear\ndata:\n  augment:\n  - {name: PadCrop, pad: 2, pad: 3}\n",
            "pad",
            (5, (21, 29)),
        ),
        ("name: a\nmodel: linear\nsweep:\n  optim.lr: [1, 2]\n  optim.lr: [3]\n", "optim.lr", (4, 5)),
        ("name: a\nmodel: linear\nsweep:\n  variants:\n    v: {seed: 1}\n    v: {seed: 2}\n", "v", (5, 6)),
    ],
)
def test_duplicate_key_names_key_and_both_lines(tmp_path, text, key, lines):
    recipe = write(tmp_path / "r.yaml", text)
    cmd = ("sweep", recipe, "--out", tmp_path / "sw") if "sweep:" in text else ("recipe", "check", recipe)
    line, other = lines  # other: the second line, or both columns when the two are on one line
    where = (
        f"line {line} (columns {other[0]} and {other[1]})"
        if isinstance(other, tuple)
        else f"line {line} and on line {other}"
    )
    clear_error(invoke(*cmd), f"key {key!r} is given twice", where)
    assert not (tmp_path / "sw").exists()


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = "base: &b {name: sgd, lr: 0.1}\noptim:\n  <<: *b\n  lr: 0.2\n"
    assert read_yaml(write(tmp_path / "r.yaml", text))["optim"] == {"name": "sgd", "lr": 0.2}


def test_same_text_same_value_in_set_grid_and_sweep_file(tmp_path):
    """Each text through --set, --grid and a sweep file's list (the description field takes
    any value before validation, so the parsed value is read back from the plan)."""
    for text, expected in VALUES:
        via_set = parse_override(f"x={text}")[1]
        (via_grid,) = [o for _, o in plan_sweep_axes(tmp_path, grid=[f"description={text}"])]
        (via_file,) = [o for _, o in plan_sweep_axes(tmp_path, block=f"  description: [{text}]\n")]
        for got in (via_set, via_grid, via_file):
            assert got == expected and type(got) is type(expected), (text, got, expected)
