"""Recipes fail at load time, with the dotted path and a suggestion."""

from __future__ import annotations

import pytest

from clfkit.errors import RecipeError
from clfkit.recipe import load_recipe, parse_override, validate_recipe

from conftest import TINY


def problems(data) -> list[tuple[str, str]]:
    with pytest.raises(RecipeError) as e:
        validate_recipe(data)
    return e.value.problems


def with_(path: str, value):
    import copy

    from clfkit.recipe import apply_override

    d = copy.deepcopy(TINY)
    apply_override(d, path.split("."), value)
    return d


def test_tiny_recipe_is_valid_and_resolved():
    r = validate_recipe(TINY)
    assert r.model["name"] == "cnn"
    assert r.model["norm"] == {"name": "batch", "momentum": 0.1, "eps": 1e-5}  # defaults filled in
    assert r.optim["betas"] == [0.9, 0.999]


@pytest.mark.parametrize(
    "path,value,where,words",
    [
        ("train.epocs", 3, "train.epocs", "did you mean 'epochs'"),
        ("data.imagesize", 3, "data.imagesize", "did you mean 'image_size'"),
        ("model.name", "resnt", "model.name", "did you mean 'resnet'"),
        ("model.blocks.0.chanels", 8, "model.blocks.0.chanels", "chanels"),
        ("optim.momentum", 0.9, "optim.momentum", "has no argument 'momentum'"),
        ("optim.lr", "fast", "optim.lr", "valid number"),
        ("optim.lr", -1, "optim.lr", "greater than 0"),
        ("train.epochs", 0, "train.epochs", "greater than or equal to 1"),
        ("data.val_fraction", 1.5, "data.val_fraction", "less than or equal to 0.9"),
        ("model.norm", "bach", "model.norm", "did you mean 'batch'"),
        ("model.norm", {"name": "group", "grups": 4}, "model.norm.grups", "did you mean 'groups'"),
        ("data.source.train_sise", 10, "data.source.train_sise", "did you mean 'train_size'"),
        ("train.precision", "fp8", "train.precision", "fp32"),
        ("data.augment", [{"name": "HorizontalFlip", "q": 0.5}], "data.augment.0.q", "no argument 'q'"),
        ("data.augment", [{"name": "HorizontallFlip"}], "data.augment.0.name", "HorizontalFlip"),
        ("regularizers", [{"name": "mixup", "alpha": -1}], "regularizers.0.alpha", "greater than 0"),
    ],
)
def test_typos_fail_with_dotted_path(path, value, where, words):
    found = problems(with_(path, value))
    assert any(p == where and words in m for p, m in found), found


def test_context_args_cannot_be_set():
    found = problems(with_("model.num_classes", 5))
    assert found[0][0] == "model.num_classes" and "set by clfkit" in found[0][1]


def test_all_problems_reported_at_once():
    d = with_("train.epocs", 3)
    d["optim"]["lr"] = "x"
    assert {p for p, _ in problems(d)} >= {"train.epocs", "optim.lr"}


def test_overrides(tmp_path):
    import yaml

    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(TINY))
    r = load_recipe(
        f, ["train.epochs=3", "optim.lr=0.01", "model.norm=none", "data.augment=[HorizontalFlip]"]
    )
    assert r.train.epochs == 3 and r.optim["lr"] == 0.01 and r.model["norm"] == {"name": "none"}
    assert r.data.augment == [{"name": "HorizontalFlip", "p": 0.5}]
    with pytest.raises(RecipeError, match="train.epochz"):
        load_recipe(f, ["train.epochz=3"])
    with pytest.raises(RecipeError, match="dotted.path=value"):
        load_recipe(f, ["train.epochs"])
    with pytest.raises(RecipeError, match="optim.lr"):
        load_recipe(f, ["optim.lr=abc"])


def test_parse_override_types():
    assert parse_override("a.b=0.01") == (["a", "b"], 0.01)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=resnet") == (["a"], "resnet")


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nmodel: {name: mlp\ntrain: 3\n")
    with pytest.raises(RecipeError, match=r"line \d+, column \d+"):
        load_recipe(f)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="YAML mapping"):
        load_recipe(f)


def test_committed_recipes_validate():
    from pathlib import Path

    from clfkit.recipe import read_yaml

    for path in sorted(Path(__file__).parent.parent.joinpath("recipes").glob("*.yaml")):
        if "sweep" in read_yaml(path):
            continue  # a sweep file: tests/test_sweep.py plans every combination of it
        load_recipe(path)


def test_recipe_reference_is_current():
    """docs/recipe-reference.md is generated; regenerate with `python -m clfkit.registry.reference --write`."""
    from pathlib import Path

    from clfkit.registry.reference import update_recipe_reference

    reference = Path(__file__).parent.parent / "docs" / "recipe-reference.md"
    assert not update_recipe_reference(reference, write=False), (
        "docs/recipe-reference.md is stale: run python -m clfkit.registry.reference --write"
    )


@pytest.mark.parametrize(
    "data, path",
    [
        (dict(data={"image_size": [32, "a"]}), "data.image_size.1"),
        (dict(data={"normalize": {"mean": [0.5], "std": [0]}}), "data.normalize.std.0"),
        (dict(data={"normalize": {"mean": [0.5], "sdt": [1]}}), "data.normalize.sdt"),
    ],
)
def test_union_fields_report_the_recipe_path(data, path):
    """pydantic's union-member tags (constrained-int, Normalize, ...) never show in a path."""
    found = problems(dict(TINY, **data))
    assert path in {p for p, _ in found}, found
    assert all("constrained" not in p and "Normalize" not in p for p, _ in found), found


def test_component_value_error_shows_the_input_once():
    ((path, msg),) = problems(dict(TINY, model=3))
    assert path == "model" and msg.count("got 3") == 1 and "Value error" not in msg, msg
