"""Red team of 2026-12-02 (rtC): the training front door through the CLI as a hurried student
uses it: odd recipe files and values, ``--set``, ``init:``, plugins, eval/compare on odd runs."""
from __future__ import annotations

import multiprocessing
import time

import pytest

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


@pytest.mark.parametrize("text", ["name: &a [*a]\n",
                                  "name: tiny\ndata: &d\n  image_size: 8\n  x: [1, *d]\n",
                                  "name: tiny\ntrain: &t {<<: *t, epochs: 1}\n"])
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
@pytest.mark.parametrize("override, path, read_as", [
    ("train.batch_size=true", "train.batch_size", "1"),
    ("optim.lr=true", "optim.lr", "1.0"),
    ("seed=false", "seed", "0"),
    ("model.blocks=[{channels: true}]", "model.blocks.0.channels", "1"),
    ("data.source.val_size=true", "data.source.val_size", "1"),
])
def test_true_or_false_where_a_number_goes_is_refused(recipe_file, tmp_path, override, path, read_as):
    out = refused([path, "yes/no value", "takes a number", f"read as {read_as}"],
                  "train", recipe_file, "--set", override, "--out", tmp_path / "runs")
    assert "1 problem" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["train.ema=true", "train.early_stopping=true",
                                      "train.deterministic=true", "train.channels_last=false"])
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


@pytest.mark.parametrize("content, words", [
    ("", ["got nothing", "empty"]),
    ("# only a comment\n", ["got nothing", "comments"]),
    ("- name: tiny\n", ["got list"]),
])
def test_a_recipe_that_is_no_mapping_says_what_it_got(tmp_path, content, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    refused(["r.yaml", "a recipe is a YAML mapping of fields", *words], "train", recipe,
            "--out", tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_an_endless_recipe_file_is_refused_by_size(tmp_path):
    refused(["/dev/zero", "larger than", "not a recipe"], "recipe", "check", "/dev/zero")


@pytest.mark.parametrize("target", ["/dev/null", "fifo"])
def test_init_naming_a_device_or_a_pipe_says_so(recipe_file, tmp_path, target):
    import os

    if target == "fifo":
        target = tmp_path / "weights.pt"
        os.mkfifo(target)
    refused(["init:", str(target), "not a regular file"], "train", recipe_file, "--set", f"init={target}",
            "--out", tmp_path / "runs")


# --------------------------------------------------------------------------- plugins new NAME
@pytest.mark.parametrize("name", ["x_", "nets-", "a" * 65, "a" * 300])
def test_plugins_new_refuses_names_pip_or_the_file_system_would(tmp_path, name):
    """'x_' made the distribution 'clfkit-x-', which pip refuses; 300 characters was an
    OSError traceback (file name too long)."""
    refused(["plugin name", "ending with a letter or digit", "at most 64"],
            "plugins", "new", "--dir", tmp_path, name)
    assert list(tmp_path.iterdir()) == []


def test_plugins_new_takes_a_name_at_the_length_limit(tmp_path):
    code, out = invoke("plugins", "new", "--dir", tmp_path, "a" * 64)
    assert code == 0, out
    assert (tmp_path / f"clfkit-{'a' * 64}" / f"clfkit_{'a' * 64}").is_dir()


# --------------------------------------------------------------------------- eval / export on odd run folders
def test_a_finished_run_without_best_pt_is_not_silently_evaluated_on_last_pt(trained_run, tmp_path):
    """eval rewrote per_class.csv, confusion.png and report.html from last.pt, and export made
    last.pt the run's model, without a word."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (run / "best.pt").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for command in ("eval", "export"):
        refused([str(run), "finished run without its best.pt", "--checkpoint last.pt"], command, run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    code, out = invoke("eval", run, "--checkpoint", "last.pt")
    assert code == 0, out


# --------------------------------------------------------------------------- --resume combinations
@pytest.mark.parametrize("extra", [["--out", "elsewhere"], ["--track", "tensorboard"]])
def test_resume_refuses_out_and_track_it_would_ignore(trained_run, tmp_path, extra):
    """--out was ignored (the run went on in its own folder) and --track too, silently."""
    refused(["--resume", "--out", "--track", "give no RECIPE"], "train", "--resume", trained_run.run_dir, *extra)
    assert not (tmp_path / "elsewhere").exists()


def test_resume_of_the_folder_holding_runs_names_them(trained_run, tmp_path):
    """'--resume runs' said 'the run stopped before its first checkpoint'."""
    import shutil

    shutil.copytree(trained_run.run_dir, tmp_path / "runs" / "tiny")
    refused(["is not a run folder, it holds run folders", str(tmp_path / "runs" / "tiny")],
            "train", "--resume", tmp_path / "runs")


# --------------------------------------------------------------------------- compare -o
def test_compare_never_writes_over_a_run_file_or_a_file_that_is_no_picture(trained_run, tmp_path):
    """`compare A B -o A/best.pt` replaced best.pt with a PNG, as did -o notes.txt."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out in (run / "best.pt", run / "curves.png", run / "summary.json"):
        refused(["-o", "is a file of the run folder", "compare.png"], "compare", run, "-o", out)
    refused(["-o", "exists and is not a .png file"], "compare", run, "-o", tmp_path / "notes.txt")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    code, out = invoke("compare", run, "-o", tmp_path / "c.png")
    assert code == 0 and (tmp_path / "c.png").is_file(), out
    code, out = invoke("compare", run, "-o", tmp_path / "c.png")  # an earlier picture is replaced
    assert code == 0, out


# --------------------------------------------------------------------------- --set twice
@pytest.mark.parametrize("sets, words", [
    (["train.epochs=3", "train.epochs=4"], ["train.epochs", "is set twice"]),
    (["model.blocks.0.channels=4", "model=mlp"], ["model", "replaces the earlier --set model.blocks.0.channels"]),
])
def test_a_set_that_would_silently_lose_an_earlier_one_is_refused(recipe_file, tmp_path, sets, words):
    """The later --set won without a word (a recipe file's duplicate key is an error)."""
    args = [a for s in sets for a in ("--set", s)]
    refused(words, "train", recipe_file, *args, "--out", tmp_path / "runs")
    refused(words, "sweep", recipe_file, "--grid", "seed=0,1", *args, "--out", tmp_path / "sw")
    refused(words, "tune", recipe_file, "--space", "optim.lr=loguniform(1e-4,1e-2)", *args,
            "--out", tmp_path / "tu")
    assert not any((tmp_path / d).exists() for d in ("runs", "sw", "tu"))


def test_a_component_then_its_argument_is_still_fine():
    from clfkit.recipe import apply_override, parse_overrides

    data: dict = {}
    for keys, value in parse_overrides(["model=resnet", "model.depth=34"]):
        apply_override(data, keys, value)
    assert data == {"model": {"name": "resnet", "depth": 34}}
