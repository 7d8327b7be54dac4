"""Issue 11, the deploy side, through the real CLI: export/eval only ever report a run as itself
(checkpoint names, paths into other runs, copied checkpoints, folders that are not runs),
outputs never replace inputs, test.txt stays one parseable line per image whatever the file
names, edited ONNX metadata and foreign timm weights are clear errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from clfkit.deploy.batch_predict import read_predictions
from conftest import invoke, refused, tiny_recipe
import subprocess
import sys


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links included) -> content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def run_b(tmp_path_factory) -> Path:
    """A second run with another recipe (another seed, 1 epoch)."""
    from clfkit.train.trainer import train

    return train(tiny_recipe(seed=1, train__epochs=1), tmp_path_factory.mktemp("runs_b"), quiet=True).run_dir


@pytest.fixture
def run_a(trained_run, tmp_path) -> Path:
    """A private copy of the shared run, free to be misused."""
    return Path(shutil.copytree(trained_run.run_dir, tmp_path / "run_a"))


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory) -> Path:
    from clfkit.deploy.export import export_run

    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("exp") / "tiny.onnx").path


@pytest.mark.parametrize("command", ["export", "eval"])
@pytest.mark.parametrize("name", ["bestt.pt", "best", "BEST.PT", "summary.json"])
def test_checkpoint_typo_lists_the_checkpoints(run_a, tmp_path, monkeypatch, command, name):
    monkeypatch.chdir(tmp_path)
    before = snapshot(run_a)
    refused([name, "no such checkpoint", "best.pt, last.pt"], command, run_a, "--checkpoint", name)
    assert snapshot(run_a) == before and not (tmp_path / "exported").exists()


def _other_run_paths(run_a: Path, run_b: Path) -> list[str]:
    rel = os.path.relpath(run_b / "best.pt", run_a)
    return [
        str(run_b / "best.pt"),
        os.path.relpath(run_b / "best.pt"),
        rel,
        str(run_a / ".." / "x" / "best.pt"),
    ]


@pytest.mark.parametrize("command", ["export", "eval"])
def test_checkpoint_of_another_run_is_refused(run_a, run_b, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    before = snapshot(run_a)
    for path in _other_run_paths(run_a, run_b):
        refused(["not in the run folder", f"clfkit {command}"], command, run_a, "--checkpoint", path)
    # a link in A to B's checkpoint, and B's checkpoint copied into A
    (run_a / "linked.pt").symlink_to(run_b / "best.pt")
    refused(["linked.pt", "outside the run folder", str(run_b)], command, run_a, "--checkpoint", "linked.pt")
    shutil.copy(run_b / "best.pt", run_a / "copied.pt")
    refused(["copied.pt", "not trained by this run", "recipe"], command, run_a, "--checkpoint", "copied.pt")
    (run_a / "linked.pt").unlink()
    (run_a / "copied.pt").unlink()
    assert snapshot(run_a) == before and not (tmp_path / "exported").exists()


def test_checkpoint_with_other_classes_is_refused(run_a, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = json.loads((run_a / "summary.json").read_text())
    summary["class_names"] = list(reversed(summary["class_names"]))
    (run_a / "summary.json").write_text(json.dumps(summary))
    refused(["best.pt", "not trained by this run", "classes"], "export", run_a)


@pytest.mark.parametrize("layout", ["empty", "files", "checkpoint-only", "file"])
def test_a_folder_that_is_not_a_run_is_refused(trained_run, tmp_path, monkeypatch, layout):
    folder = tmp_path / "notarun"
    folder.mkdir()
    if layout == "files":
        (folder / "notes.txt").write_text("hello")
    if layout == "checkpoint-only":
        shutil.copy(trained_run.run_dir / "best.pt", folder / "best.pt")
    if layout == "file":
        shutil.rmtree(folder)
        folder.write_text("x")
    monkeypatch.chdir(folder if folder.is_dir() else tmp_path)
    words = {
        "empty": ["not a run folder", "no checkpoint"],
        "files": ["not a run folder", "no checkpoint"],
        "checkpoint-only": ["not a run folder", "recipe.yaml"],
        "file": ["is a file"],
    }[layout]
    target = "." if folder.is_dir() else folder
    refused(words, "export", target)
    refused(words, "eval", target)
    assert not list(tmp_path.rglob("*.onnx")) and not (tmp_path / "exported").exists()


def test_default_name_comes_from_the_resolved_run_folder(run_a, monkeypatch):
    monkeypatch.chdir(run_a)
    code, out = invoke("export", ".")
    assert code == 0, out
    assert (run_a / "exported" / "run_a.onnx").is_file() and "exported/run_a.onnx" in out
    code, out = invoke("export", ".")  # again: an earlier export is replaced
    assert code == 0, out


def test_unfinished_run_exports_last_and_says_so(run_a, tmp_path):
    (run_a / "best.pt").unlink()
    (run_a / "summary.json").unlink()
    code, out = invoke("export", run_a, "-o", tmp_path / "m.onnx")
    assert code == 0 and "note:" in out and "last.pt" in out and "no best.pt" in out, out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["clfkit.checkpoint"] == "last.pt" and meta["clfkit.run"] == "run_a"


def test_export_output_never_replaces_a_run_file(run_a, tmp_path):
    before = snapshot(run_a)
    (tmp_path / "link.pt").symlink_to(run_a / "best.pt")
    os.link(run_a / "summary.json", tmp_path / "hard.json")
    for out in [
        run_a / "best.pt",
        run_a / "last.pt",
        run_a / "summary.json",
        tmp_path / "link.pt",
        tmp_path / "hard.json",
    ]:
        refused(["-o", "file of the run folder"], "export", run_a, "-o", out)
    refused(["is a folder"], "export", run_a, "-o", tmp_path)
    assert snapshot(run_a) == before


# --------------------------------------------------------------------------- predict -o
def _images(root: Path, names: list[str | bytes]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            os.fsdecode(path), format="PNG"
        )
    return root


def test_predict_output_never_replaces_an_input(model, tmp_path):
    images = _images(tmp_path / "imgs", ["a.png", "b.png"])
    (tmp_path / "model_link.onnx").symlink_to(model)
    os.link(images / "a.png", tmp_path / "hard.png")
    (tmp_path / "img_link.png").symlink_to(images / "b.png")
    before = snapshot(images) | {"model": hashlib.sha256(model.read_bytes()).hexdigest()}
    cases = {
        model: "model file",
        tmp_path / "model_link.onnx": "model file",
        images / "a.png": "inside the image folder",
        images / "new.txt": "inside the image folder",
        tmp_path / "hard.png": "one of the input images",
        tmp_path / "img_link.png": "inside the image folder",
    }
    for out, words in cases.items():
        refused(["-o", words], "predict", model, images, "-o", out)
    refused(["is a folder"], "predict", model, images, "-o", tmp_path)
    assert snapshot(images) | {"model": hashlib.sha256(model.read_bytes()).hexdigest()} == before


# --------------------------------------------------------------------------- file names
AWKWARD = [
    "plain.png",
    "with space.png",
    " leading.png",
    "trailing .png",
    "new\nline.png",
    "tab\there.png",
    "back\\slash.png",
    "cr\rx.png",
    "ctl\x01.png",
    "nel\x85x.png",
    "ls\u2028x.png",
    "café.png",
    "x\\n.png",
    "end\\.png",
    "a b c .png",
    b"latin1-\xe9.png",
    b"bad-\xff\xfe.png",
]


@pytest.mark.parametrize("fmt", ["name", "index", "csv"])
def test_awkward_file_names_round_trip(model, tmp_path, fmt):
    images = _images(tmp_path / "imgs", AWKWARD)
    (images / "sub dir ").mkdir()
    _images(images / "sub dir ", ["in sub.png"])
    out = tmp_path / "test.txt"
    code, text = invoke("predict", model, images, "-o", out, "--format", fmt)
    assert code == 0 and f"wrote {len(AWKWARD) + 1} predictions" in text, text
    raw = out.read_bytes().decode("utf-8")  # valid UTF-8 whatever the names
    lines = raw.splitlines()
    assert len(lines) == len(AWKWARD) + 1 + (fmt == "csv")  # one line per image (+ the CSV header)
    back = read_predictions(out, fmt)
    want = {os.fsencode(n) for n in AWKWARD} | {b"sub dir /in sub.png"}
    assert {os.fsencode(p) for p, _ in back} == want
    classes = {"circle", "square", "triangle", "ring"} if fmt != "index" else {"0", "1", "2", "3"}
    assert {c for _, c in back} <= classes


def _with_meta(model: Path, dest: Path, **changes: str | None) -> Path:
    """A copy of ``model`` with clfkit metadata fields changed (None: removed)."""
    m = onnx.load(str(model))
    props = {p.key: p.value for p in m.metadata_props}
    for key, value in changes.items():
        if value is None:
            del props["clfkit." + key]
        else:
            props["clfkit." + key] = value
    del m.metadata_props[:]
    for k, v in props.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(dest))
    return dest


def test_class_names_with_spaces_stay_the_last_field(model, tmp_path):
    names = ["golden retriever", " x", "a\\x20b", "tab\tcat"]
    spaced = _with_meta(model, tmp_path / "spaced.onnx", class_names=json.dumps(names))
    images = _images(tmp_path / "imgs", ["a b.png", "c.png", "d .png"])
    code, out = invoke("predict", spaced, images, "-o", tmp_path / "t.txt")
    assert code == 0, out
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert all(len(line.rsplit(" ", 1)) == 2 and " " not in line.rsplit(" ", 1)[1] for line in lines)
    back = read_predictions(tmp_path / "t.txt")
    assert [p for p, _ in back] == ["a b.png", "c.png", "d .png"] and {c for _, c in back} <= set(names)


# --------------------------------------------------------------------------- predict inputs
def test_predict_folders_that_hold_nothing_to_classify(model, tmp_path):
    (tmp_path / "empty").mkdir()
    refused(
        ["empty", "holds no images: nothing"], "predict", model, tmp_path / "empty", "-o", tmp_path / "t.txt"
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    refused(
        ["docs", "only 1 file(s) without an image extension"],
        "predict",
        model,
        tmp_path / "docs",
        "-o",
        tmp_path / "t.txt",
    )
    refused(
        ["is a file, not a folder"], "predict", model, tmp_path / "docs" / "a.txt", "-o", tmp_path / "t.txt"
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"not a png")
    refused(
        ["none of the 1 image file(s)", "x.png", "nothing was written"],
        "predict",
        model,
        bad,
        "-o",
        tmp_path / "t.txt",
    )
    refused(["is a folder, not a model file"], "predict", tmp_path, bad, "-o", tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


def test_predict_output_in_a_new_folder_is_created(model, tmp_path):
    images = _images(tmp_path / "imgs", ["a.png"])
    code, out = invoke("predict", model, images, "-o", tmp_path / "new" / "deeper" / "t.txt")
    assert code == 0 and (tmp_path / "new" / "deeper" / "t.txt").read_text().startswith("a.png "), out


# --------------------------------------------------------------------------- ONNX metadata
BAD_META = [
    ("image_size", "[0, 0]", "out of range"),
    ("image_size", "[-1, 16]", "out of range"),
    ("image_size", "[100000, 100000]", "out of range"),
    ("image_size", "[16]", "[height, width]"),
    ("image_size", "[16.5, 16]", "[height, width]"),
    ("image_size", "banana", "not JSON"),
    ("image_size", "[32, 32]", "graph's input is [16, 16]"),
    ("resize", "stretch", "squash, crop"),
    ("resize", "", "squash, crop"),
    ("class_names", "circle", "not JSON"),
    ("class_names", '"circle"', "JSON list"),
    ("class_names", "[1, 2, 3, 4]", "JSON list"),
    ("class_names", '["a", "b"]', "graph outputs 4"),
    ("class_names", '["a", "a", "b", "c"]', "twice"),
    ("class_names", "[]", "JSON list"),
    ("channels", "2", "1 or 3"),
    ("channels", "three", "1 or 3"),
    ("channels", "1", "graph's input has 3"),
    ("mean", "[0.5]", "3 finite numbers"),
    ("std", "[0, 0, 0]", "> 0"),
    ("std", '"x"', "3 finite"),
    ("format", "99", "newer clfkit"),
    ("format", "one", "integer"),
    ("resize", None, "lacks clfkit metadata"),
    ("class_names", None, "lacks clfkit metadata"),
]


@pytest.mark.parametrize("key,value,words", BAD_META, ids=[f"{k}={v}" for k, v, _ in BAD_META])
def test_edited_onnx_metadata_is_a_clear_error(model, tmp_path, key, value, words):
    edited = _with_meta(model, tmp_path / "edited.onnx", **{key: value})
    images = _images(tmp_path / "imgs", ["a.png"])
    refused(["edited.onnx", f"clfkit.{key}", words], "predict", edited, images, "-o", tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


def test_truncated_or_foreign_onnx_is_a_clear_error(model, tmp_path):
    images = _images(tmp_path / "imgs", ["a.png"])
    data = model.read_bytes()
    for name, blob in [("half.onnx", data[: len(data) // 2]), ("text.onnx", b"hello"), ("empty.onnx", b"")]:
        (tmp_path / name).write_bytes(blob)
        refused(
            [name, "not a loadable ONNX model"], "predict", tmp_path / name, images, "-o", tmp_path / "t.txt"
        )
    assert not (tmp_path / "t.txt").exists()


# --------------------------------------------------------------------------- timm weights
def _timm_recipe(tmp: Path, weights: Path) -> Path:
    import yaml

    data = {
        "name": "t",
        "data": {
            "source": {"name": "shapes", "num_classes": 4, "train_size": 32, "val_size": 8, "test_size": 8},
            "image_size": 32,
        },
        "model": {"name": "timm", "arch": "resnet10t", "weights": str(weights)},
        "train": {"epochs": 1, "batch_size": 16},
    }
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_timm_weights_of_another_arch_or_not_a_state_dict(tmp_path):
    timm = pytest.importorskip("timm")
    import torch

    cases = {
        "other_arch.pt": (
            timm.create_model("mobilenetv3_small_050", num_classes=4).state_dict(),
            ["other_arch.pt", "matches only", "another architecture", "conv1"],
        ),
        "not_sd.pt": ({"epochs": 3}, ["not_sd.pt", "is not a state dict"]),
        "tensor.pt": (torch.zeros(3), ["tensor.pt", "is not a state dict"]),
    }
    for name, (obj, words) in cases.items():
        torch.save(obj, tmp_path / name)
        refused(
            words, "train", _timm_recipe(tmp_path, tmp_path / name), "--out", tmp_path / "runs", "--quiet"
        )
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    refused(
        ["junk.safetensors", "cannot be read as a state dict"],
        "train",
        _timm_recipe(tmp_path, tmp_path / "junk.safetensors"),
        "--out",
        tmp_path / "runs",
        "--quiet",
    )


def test_outputs_never_replace_other_models_or_images(model, run_a, run_b, tmp_path):
    images = _images(tmp_path / "imgs", ["a.png"])
    (tmp_path / "other.png").write_bytes(b"keep")
    for name in ["other.onnx", "weights.pt", "other.png", "w.safetensors"]:
        refused(["-o", "not a predictions file"], "predict", model, images, "-o", tmp_path / name)
    before = snapshot(run_b)
    refused(["-o", "not an .onnx file"], "export", run_a, "-o", run_b / "best.pt")
    refused(["-o", "not an .onnx file"], "export", run_a, "-o", tmp_path / "other.png")
    assert snapshot(run_b) == before and (tmp_path / "other.png").read_bytes() == b"keep"


def test_checkpoint_given_as_a_path_inside_the_run_is_accepted(run_a, tmp_path):
    code, out = invoke("export", run_a, "--checkpoint", run_a / "last.pt", "-o", tmp_path / "m.onnx")
    assert code == 0 and "note:" in out and "exported last.pt" in out, out


@pytest.mark.parametrize("samples", ["garbage", "wrong-shape", "empty", "objects"])
def test_bad_samples_npy_is_a_clear_error(run_a, tmp_path, samples):
    path = run_a / "samples.npy"
    if samples == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    else:
        arr = {
            "wrong-shape": np.zeros((4, 3, 8, 8), np.uint8),
            "empty": np.zeros((0, 3, 16, 16), np.uint8),
            "objects": np.array([{"a": 1}], dtype=object),
        }[samples]
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=True)
    refused(["samples.npy", "delete it"], "export", run_a, "-o", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


ROOT = Path(__file__).resolve().parents[1]


def _clfkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "clfkit", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --------------------------------------------------------------------------- resume after editing the recipe
@pytest.fixture
def stopped_run(monkeypatch, tmp_path) -> Path:
    """A 2-epoch run stopped by Ctrl-C in its first epoch."""
    from conftest import sigint_at_step, tiny_recipe

    from clfkit.train import trainer
    from clfkit.util.signals import Interrupted

    with monkeypatch.context() as m:
        sigint_at_step(m, 3)
        with pytest.raises(Interrupted):
            trainer.train(tiny_recipe(train__epochs=2), tmp_path, quiet=True)
    return tmp_path / "tiny"


def test_export_of_a_run_with_an_edited_recipe_yaml_says_it_may_be_the_edit(trained_run, tmp_path):
    """It said only 'It was copied from another run', for a checkpoint that never moved."""
    import shutil

    run = Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.5"))
    res = _clfkit("export", run, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "at optim.lr" in res.stderr and "recipe.yaml was edited (restore it" in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_export_of_a_stopped_run_says_the_run_is_not_finished(stopped_run, tmp_path):
    """An interrupted run's best.pt was exported with no word that training had stopped early."""
    res = _clfkit("export", stopped_run, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "note: the run is not finished (no summary.json; 2 epochs planned" in res.stdout
    assert f"clfkit train --resume {stopped_run}" in res.stdout and "exported last.pt" in res.stdout
    assert (tmp_path / "m.onnx").is_file()


def test_eval_of_a_stopped_run_says_whose_numbers_they_are(trained_run, tmp_path):
    """export said the run was not finished; eval printed the stopped run's numbers as if final."""
    import json
    import shutil

    run = Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))
    (run / "summary.json").unlink()  # killed after its epochs, before the summary
    res = _clfkit("eval", run, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "note: the run is not finished (no summary.json;" in res.stdout
    assert f"clfkit train --resume {run}" in res.stdout and "evaluated best.pt (epoch" in res.stdout
    assert json.loads((run / "eval_test.json").read_text())["run_finished"] is False


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
    refused(
        ["not in the run folder", f"clfkit export {other.resolve()}"],
        "export",
        "a",
        "--checkpoint",
        "../b/best.pt",
    )
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
    refused(
        [existing, "only an earlier predictions file is replaced"], "predict", model, images, "-o", target
    )
    assert target.read_text() == "keep me"
    earlier = tmp_path / "old.txt"
    earlier.write_text("stale")
    code, out = invoke("predict", model, images, "-o", earlier)
    assert code == 0 and earlier.read_text() != "stale", out


def test_min_agreement_is_a_percentage_of_the_int8_export(trained_run, tmp_path):
    code, out = invoke(
        "export", trained_run.run_dir, "-o", tmp_path / "a.onnx", "--int8", "--min-agreement", "150"
    )
    assert code == 2 and "150" in out and "0<=x<=100" in out.replace(" ", ""), out
    refused(
        ["--min-agreement", "--int8"],
        "export",
        trained_run.run_dir,
        "-o",
        tmp_path / "b.onnx",
        "--min-agreement",
        "50",
    )
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
