"""Recipe files and --set (clfkit.recipe, clfkit.util.yaml_text) through the CLI: odd files (a
pipe, no mapping, endless), odd values (aliases, true/false, inf/nan), overrides that would
lose an earlier one, init: paths that are devices, a model too large, names at the limit.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
import yaml
from cli_cases import TINY, clear_error, cli_result, write
from conftest import invoke, refused, tiny_recipe, tiny_recipe_file


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe_file(tmp_path_factory.mktemp("rt19c"), train__epochs=1, data__image_size=8)


# --------------------------------------------------------------------------- YAML that contains itself
def _check_in_a_child(args: list[str], queue) -> None:
    queue.put(invoke(*args))


def invoke_briefly(*args, seconds: float = 60) -> tuple[int, str]:
    """``invoke`` in a child process that must answer within ``seconds`` (a hang is a failure,
    not a stuck test run)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_check_in_a_child, args=([str(a) for a in args], queue))
    child.start()
    try:
        return queue.get(timeout=seconds)
    finally:
        child.kill()
        child.join()


@pytest.mark.parametrize(
    "text",
    [
        "name: &a [*a]\n",
        "name: tiny\ndata: &d\n  image_size: 8\n  x: [1, *d]\n",
        "name: tiny\ntrain: &t {<<: *t, epochs: 1}\n",
    ],
)
def test_an_alias_inside_its_own_anchor_is_refused_at_once(tmp_path, text):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    t0 = time.perf_counter()
    code, out = invoke_briefly("train", recipe, "--out", tmp_path / "runs")
    assert code == 2 and out.startswith("error: "), out
    assert "inside itself" in out and "line " in out, out
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "runs").exists()


def test_an_alias_inside_its_own_anchor_in_set_is_refused(recipe_file):
    code, out = invoke_briefly("recipe", "check", recipe_file, "--set", "optim.lr=&a [1, *a]")
    assert code == 2 and "optim.lr" in out and "inside itself" in out, out


# --------------------------------------------------------------------------- true/false where a number goes
@pytest.mark.parametrize(
    "override, path, read_as",
    [
        ("train.batch_size=true", "train.batch_size", "1"),
        ("optim.lr=true", "optim.lr", "1.0"),
        ("seed=false", "seed", "0"),
        ("model.blocks=[{channels: true}]", "model.blocks.0.channels", "1"),
        ("data.source.val_size=true", "data.source.val_size", "1"),
    ],
)
def test_true_or_false_where_a_number_goes_is_refused(recipe_file, tmp_path, override, path, read_as):
    out = refused(
        [path, "yes/no value", "takes a number", f"read as {read_as}"],
        "train",
        recipe_file,
        "--set",
        override,
        "--out",
        tmp_path / "runs",
    )
    assert "1 problem" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "override",
    ["train.ema=true", "train.early_stopping=true", "train.deterministic=true", "train.channels_last=false"],
)
def test_true_or_false_where_a_yes_no_or_shorthand_goes_still_works(override):
    key, value = override.split("=")
    tiny_recipe(**{key.replace(".", "__"): value == "true"})


# --------------------------------------------------------------------------- odd recipe files, odd init:
def test_a_recipe_from_a_pipe_trains(recipe_file, tmp_path):
    """bash's ``clfkit train <(sed ... r.yaml)`` passes /dev/fd/N, a pipe (was 'does not exist')."""
    import os
    import threading

    fifo = tmp_path / "recipe.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(recipe_file.read_text(),))
    writer.start()
    code, out = invoke("recipe", "check", fifo)
    writer.join()
    assert code == 0 and "recipe OK" in out, out


@pytest.mark.parametrize(
    "content, words",
    [
        ("", ["got nothing", "empty"]),
        ("# only a comment\n", ["got nothing", "comments"]),
        ("- name: tiny\n", ["got list"]),
    ],
)
def test_a_recipe_that_is_no_mapping_says_what_it_got(tmp_path, content, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    refused(
        ["r.yaml", "a recipe is a YAML mapping of fields", *words],
        "train",
        recipe,
        "--out",
        tmp_path / "runs",
    )
    assert not (tmp_path / "runs").exists()


def test_an_endless_recipe_file_is_refused_by_size(tmp_path):
    refused(["/dev/zero", "larger than", "not a recipe"], "recipe", "check", "/dev/zero")


@pytest.mark.parametrize("target", ["/dev/null", "fifo"])
def test_init_naming_a_device_or_a_pipe_says_so(recipe_file, tmp_path, target):
    import os

    if target == "fifo":
        target = tmp_path / "weights.pt"
        os.mkfifo(target)
    refused(
        ["init:", str(target), "not a regular file"],
        "train",
        recipe_file,
        "--set",
        f"init={target}",
        "--out",
        tmp_path / "runs",
    )


# --------------------------------------------------------------------------- --set twice
@pytest.mark.parametrize(
    "sets, words",
    [
        (["train.epochs=3", "train.epochs=4"], ["train.epochs", "is set twice"]),
        (
            ["model.blocks.0.channels=4", "model=mlp"],
            ["model", "replaces the earlier --set model.blocks.0.channels"],
        ),
    ],
)
def test_a_set_that_would_silently_lose_an_earlier_one_is_refused(recipe_file, tmp_path, sets, words):
    """The later --set won without a word (a recipe file's duplicate key is an error)."""
    args = [a for s in sets for a in ("--set", s)]
    refused(words, "train", recipe_file, *args, "--out", tmp_path / "runs")
    refused(words, "sweep", recipe_file, "--grid", "seed=0,1", *args, "--out", tmp_path / "sw")
    refused(
        words,
        "tune",
        recipe_file,
        "--space",
        "optim.lr=loguniform(1e-4,1e-2)",
        *args,
        "--out",
        tmp_path / "tu",
    )
    assert not any((tmp_path / d).exists() for d in ("runs", "sw", "tu"))


def test_a_component_then_its_argument_is_still_fine():
    from clfkit.recipe import apply_override, parse_overrides

    data: dict = {}
    for keys, value in parse_overrides(["model=resnet", "model.depth=34"]):
        apply_override(data, keys, value)
    assert data == {"model": {"name": "resnet", "depth": 34}}


def test_a_recipe_name_at_the_length_limit_gets_its_best_yaml(recipe_file, tmp_path):
    """A 200-character recipe name: every trial trained, then best.yaml's '<name>-best' (205
    characters) was refused, so the tune exited 2 with no report.html, and so did every rerun."""
    pytest.importorskip("optuna")
    code, out = invoke(
        "tune",
        recipe_file,
        "--trials",
        1,
        "--set",
        f"name={'a' * 200}",
        "--space",
        "optim.lr=loguniform(1e-3,1e-1)",
        "--out",
        tmp_path / "t",
        "--quiet",
    )
    assert code == 0, out
    best = yaml.safe_load((tmp_path / "t" / "best.yaml").read_text())
    assert best["name"] == "a" * 195 + "-best" and (tmp_path / "t" / "report.html").is_file()


# --------------------------------------------------------------------------- row 19: tracebacks
@pytest.mark.parametrize(
    "override, words",
    [
        ("seed=12345678901234567890", ["seed", "does not fit in 64 bits"]),
        ("seed=4294967296", ["seed", "outside the valid seed range", "0 to 4294967295"]),
        ("seed=-1", ["seed", "outside the valid seed range", "0 to 4294967295"]),
        ("data.source.train_size=123456789012345678901234", ["data.source.train_size", "64 bits"]),
        ("data.normalize.mean.0.x=1", ["data.normalize.mean.0", "not a mapping or a list"]),
        ("data.augment.0.x.y=1", ["data.augment.0.x", "HorizontalFlip", "no argument 'x'"]),
        ("data.augment.5.p=1", ["data.augment.5", "out of range"]),
        ("name.0=x", ["name", "not a mapping or a list"]),
    ],
)
def test_bad_overrides_are_clear_errors(tmp_path, override, words):
    recipe = write(
        tmp_path / "r.yaml",
        {
            **TINY,
            "data": {
                **TINY["data"],
                "augment": ["HorizontalFlip"],
                "normalize": {"mean": [0.5] * 3, "std": [1.0] * 3},
            },
        },
    )
    for cmd in (("recipe", "check", recipe), ("train", recipe, "--out", tmp_path / "runs")):
        clear_error(cli_result(*cmd, "--set", override), *words)
    assert not (tmp_path / "runs").exists()


def test_set_into_a_component_named_in_a_list(tmp_path):
    recipe = write(tmp_path / "r.yaml", {**TINY, "data": {**TINY["data"], "augment": ["HorizontalFlip"]}})
    result = cli_result("recipe", "check", recipe, "--set", "data.augment.0.p=0.25")
    assert result.exit_code == 0 and "p: 0.25" in result.output, result.output


def test_model_too_large_is_refused_before_data_or_allocation(tmp_path, monkeypatch):
    big = {**TINY, "model": "mlp", "data": {**TINY["data"], "image_size": 4096}}
    recipe = write(tmp_path / "r.yaml", big)
    for cmd in (
        ("recipe", "check", recipe),
        ("train", recipe, "--out", tmp_path / "runs"),
        ("sweep", recipe, "--grid", "seed=0,1", "--out", tmp_path / "sw"),
    ):
        t0 = time.perf_counter()
        clear_error(cli_result(*cmd), "mlp for 3x4096x4096", "parameters", "GB", "CLFKIT_MAX_PARAMS")
        assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sw").exists()
    monkeypatch.setenv("CLFKIT_MAX_PARAMS", "100")  # the cap can be set
    clear_error(cli_result("recipe", "check", write(tmp_path / "s.yaml", TINY)), "more than the cap of 100")
    monkeypatch.setenv("CLFKIT_MAX_PARAMS", "lots")
    clear_error(cli_result("recipe", "check", write(tmp_path / "s.yaml", TINY)), "CLFKIT_MAX_PARAMS='lots'")


def _recipe_file(tmp_path, **changes):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**changes).to_dict()))
    return path


# --------------------------------------------------------------------------- non-finite numbers
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("loss.class_weights", "[1, .inf, 1, 1]", ["loss.class_weights", "finite"]),
        ("loss.class_weights", "[1, .nan, 1, 1]", ["loss.class_weights", "finite"]),
        # any component's float argument: Beta(inf, inf) trained without a word before
        (
            "regularizers",
            "[{name: mixup_cutmix, mixup_alpha: .inf}]",
            ["regularizers.0.mixup_alpha", "finite"],
        ),
        ("regularizers", "[{name: grad_clip, max_norm: .nan}]", ["regularizers.0.max_norm", "finite"]),
    ],
)
def test_inf_and_nan_arguments_are_refused_at_load(tmp_path, field, value, words):
    # before: class_weights [1, inf, 1] started training and stopped at step 1 as a NaN loss
    # blaming the learning rate; mixup_alpha: .inf trained silently
    recipe = _recipe_file(tmp_path)
    refused(
        words,
        "train",
        recipe,
        "--set",
        f"{field}={value}",
        "--out",
        tmp_path / "runs",
        "--quiet",
        max_lines=None,
    )
    assert not (tmp_path / "runs").exists()
