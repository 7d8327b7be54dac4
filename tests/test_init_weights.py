"""Fine-tuning from a run (``init:``) trusts the head only where the classes are the same
classes, by name; the receipt (weights.json) says truly why a tensor did not load (issue 22,
class 1). The source is conftest's trained_run: shapes circle, square, triangle, ring."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
import yaml
from conftest import TINY, invoke, refused, write_image_folder

SHAPES = ("circle", "square", "triangle", "ring")


def _recipe_file(tmp_path, classes, init, model=None, image_size=16, **extra):
    root = write_image_folder(tmp_path / "data", classes=classes, per_class=4, size=image_size)
    recipe = {
        "name": "ft",
        "seed": 0,
        "init": str(init),
        "model": model or TINY["model"],
        "data": {
            "source": {"name": "folder", "root": str(root)},
            "image_size": image_size,
            "val_fraction": 0.25,
        },
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8},
        **extra,
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def _train(tmp_path, *args):
    code, out = invoke("train", *args, "--out", tmp_path / "runs")
    assert code == 0, out
    receipt = json.loads(next((tmp_path / "runs").glob("*/weights.json")).read_text())["receipts"][0]
    return out, receipt


def _head_after_init(run_dir, class_names):
    """The classifier rows a model for ``class_names`` starts from after init from ``run_dir``
    (what the trainer does before the first step), and the receipt."""
    from clfkit.train.build import build_model
    from clfkit.recipe import validate_recipe
    from clfkit.train.init_weights import load_init

    recipe = validate_recipe(
        {
            **TINY,
            "data": {**TINY["data"], "source": {**TINY["data"]["source"], "num_classes": len(class_names)}},
        }
    )
    torch.manual_seed(1)
    model = build_model(recipe, len(class_names), 3, (16, 16), [0.5] * 3, [0.25] * 3)
    receipt = load_init(model, run_dir, 0.5, list(class_names))
    return model.state_dict(), receipt


def test_same_class_count_other_names_reinitializes_the_head_and_says_why(trained_run, tmp_path):
    out, receipt = _train(tmp_path, _recipe_file(tmp_path, ("ant", "bee", "cat", "dog"), trained_run.run_dir))
    assert "4 -> 4 classes, re-initialized: no class in common" in receipt["head"], receipt["head"]
    assert "'circle'" in receipt["head"] and "'ant'" in receipt["head"]
    assert {r["tensor"] for r in receipt["reinitialized"]} == {"net.3.weight", "net.3.bias"}
    assert all("net.head" not in t for t in receipt["loaded"]) and receipt["adapted"] == []
    assert "2 re-initialized (classifier net.3 4 -> 4 classes" in out, out


def test_shared_classes_keep_their_rows_by_name_new_ones_start_fresh(trained_run):
    old = torch.load(trained_run.run_dir / "best.pt", weights_only=True)["model"]
    new_names = ["ring", "circle", "zebra"]  # ring and circle swap places; zebra is new
    state, receipt = _head_after_init(trained_run.run_dir, new_names)
    for tensor in ("net.3.weight", "net.3.bias"):
        assert torch.equal(state[tensor][0], old[tensor][SHAPES.index("ring")])
        assert torch.equal(state[tensor][1], old[tensor][SHAPES.index("circle")])
        assert not any(torch.equal(state[tensor][2], row) for row in old[tensor])
    assert "rows mapped by class name: 2 shared, 1 new freshly initialized ('zebra')" in receipt.head
    assert "2 of the init run's dropped ('square', 'triangle')" in receipt.head
    assert {k for k, _ in receipt.adapted} == {"net.3.weight", "net.3.bias"}
    assert "adapted (classifier net.3 4 -> 3 classes, rows mapped" in receipt.line()


def test_no_class_in_common_leaves_the_head_as_freshly_initialized(trained_run):
    from clfkit.train.build import build_model
    from clfkit.recipe import validate_recipe

    old = torch.load(trained_run.run_dir / "best.pt", weights_only=True)["model"]
    state, receipt = _head_after_init(trained_run.run_dir, ["ant", "bee", "cat", "dog"])
    torch.manual_seed(1)  # the model _head_after_init built, before init
    fresh = build_model(validate_recipe(TINY), 4, 3, (16, 16), [0.5] * 3, [0.25] * 3).state_dict()
    for tensor in ("net.3.weight", "net.3.bias"):
        assert torch.equal(state[tensor], fresh[tensor]) and not torch.equal(state[tensor], old[tensor])
    assert torch.equal(state["net.0.0.weight"], old["net.0.0.weight"])  # the backbone did load
    assert "no class in common" in receipt.head


def test_the_same_classes_in_another_order_are_reordered_not_loaded_as_is(trained_run):
    old = torch.load(trained_run.run_dir / "best.pt", weights_only=True)["model"]
    state, receipt = _head_after_init(trained_run.run_dir, list(reversed(SHAPES)))
    assert torch.equal(state["net.3.weight"], old["net.3.weight"].flip(0))
    assert "the same classes in another order" in receipt.head
    same, receipt = _head_after_init(trained_run.run_dir, list(SHAPES))
    assert torch.equal(same["net.3.bias"], old["net.3.bias"]) and receipt.head is None
    assert len(receipt.loaded) == receipt.total


def test_an_image_size_change_is_reported_as_a_shape_and_a_head_loads_whole_or_not_at_all(tmp_path):
    """The linear model's head holds every tensor: after an image-size change its weight no
    longer fits while its bias would; neither loads, and no reason speaks of classes."""
    from clfkit.train.weights_receipt import compare

    first = tmp_path / "first"
    recipe = _recipe_file(first, ("a", "b", "c"), "none", model={"name": "linear"})
    data = yaml.safe_load(recipe.read_text())
    del data["init"]
    recipe.write_text(yaml.safe_dump(data))
    code, out = invoke("train", recipe, "--out", first / "runs", "--quiet")
    assert code == 0, out
    run = next((first / "runs").iterdir())
    out = refused(
        ["shape in the file (3, 768), in the model (3, 1200)"],
        "train",
        _recipe_file(tmp_path, ("a", "b", "c"), run, model={"name": "linear"}, image_size=20),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert (
        "3 -> 3 classes" not in out and "only the classifier differs" in out and "Train without init" in out
    )
    own = {"fc.weight": torch.zeros(3, 1200), "fc.bias": torch.zeros(3)}
    receipt = compare(
        own,
        {"fc.weight": torch.ones(3, 768), "fc.bias": torch.ones(3)},
        source="x",
        field_name="init",
        head=["fc.weight", "fc.bias"],
    )
    assert receipt.loaded == [] and {k for k, _ in receipt.reinitialized} == {"fc.weight", "fc.bias"}
    assert all("classes" not in why and "(3, 768)" in why for _, why in receipt.reinitialized)


def test_an_image_size_change_reinitializes_the_whole_head_with_the_shape_as_reason(trained_run, tmp_path):
    """The cnn flattens its last feature map: at 20 px its head's weight no longer fits, its bias
    would. Both start fresh; the reason is the weight's shape, not '4 -> 4 classes'."""
    out, receipt = _train(
        tmp_path, _recipe_file(tmp_path, sorted(SHAPES), trained_run.run_dir, image_size=20)
    )
    why = {r["tensor"]: r["why"] for r in receipt["reinitialized"]}
    assert set(why) == {"net.3.weight", "net.3.bias"}, why
    assert all("shape in the file (4, 512), in the model (4, 800)" in w for w in why.values())
    assert "classes" not in out.split("init:")[1].splitlines()[0] and "net.3.bias" not in receipt["loaded"]


def test_an_unfinished_source_run_gets_exports_note(trained_run, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(trained_run.run_dir, stopped)
    (stopped / "summary.json").unlink()  # as a run stopped before its last epoch leaves it
    out, receipt = _train(tmp_path, _recipe_file(tmp_path, SHAPES, stopped))
    assert "init: note:" in out and "the run is not finished" in out and "train --resume" in out, out
    assert any("not finished" in n for n in receipt["notes"])
    # the same four classes (a folder's in sorted order): every tensor loads, the head reordered
    assert (
        len(receipt["loaded"]) + len(receipt["adapted"]) == receipt["total"]
        and receipt["reinitialized"] == []
    )
    out, receipt = _train(tmp_path / "again", _recipe_file(tmp_path / "again", SHAPES, trained_run.run_dir))
    assert "not finished" not in out and receipt["notes"] == []


class _Anything:
    pass


@pytest.mark.parametrize("content", ["pickle", "whole-model", "text", "empty", "state-dict"])
def test_a_file_that_is_not_a_checkpoint_gets_clfkits_message(tmp_path, content):
    bad = tmp_path / "w.pt"
    if content == "pickle":
        bad.write_bytes(pickle.dumps({"model": _Anything()}))
    elif content == "whole-model":
        torch.save(torch.nn.Linear(2, 2), bad)
    elif content == "state-dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), bad)
    else:
        bad.write_text("" if content == "empty" else "not weights\n")
    out = refused(
        ["w.pt", "not a clfkit checkpoint"],
        "train",
        _recipe_file(tmp_path, SHAPES, bad),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
    assert "weights_only" not in out and "trust" not in out and len(out.splitlines()) <= 2, out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_class_names_spelled_differently_from_the_init_runs_are_an_error(trained_run, tmp_path):
    refused(
        ["'ring'", "'ring '", "spell the same class differently"],
        "train",
        _recipe_file(tmp_path, ("circle", "square", "triangle", "ring "), trained_run.run_dir),
        "--out",
        tmp_path / "runs",
        max_lines=None,
    )
