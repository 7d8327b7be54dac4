"""Predictions files (issue 22, class 6): --topk lines read back unambiguously whatever the
file and class names, -o suggests only a path it accepts, and -o never writes through a link
onto a run's file or a file of another kind (predict and compare share the rule)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import invoke, refused
from PIL import Image

from clfkit.deploy.batch_predict import read_predictions, read_ranked


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory) -> Path:
    from clfkit.deploy.export import export_run

    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("exp") / "tiny.onnx").path


def _images(root: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / name, format="PNG")
    return root


def _renamed(model: Path, dest: Path, names: list[str]) -> Path:
    """A copy of ``model`` whose classes are called ``names``."""
    m = onnx.load(str(model))
    for p in m.metadata_props:
        if p.key == "clfkit.class_names":
            p.value = json.dumps(names)
    onnx.save(m, str(dest))
    return dest


NAMES = ["x tulip.png", "a b c.png", "tab\there.png", " lead.png", "plain.png"]
CLASSES = ["daisy", "golden retriever", "tab\tcat", " x"]


@pytest.mark.parametrize("fmt", ["name", "index", "csv"])
def test_topk_files_read_back_as_written(model, tmp_path, fmt):
    """Was: `x.jpg tulip daisy` read back as file 'x.jpg tulip', class 'daisy'."""
    spaced = _renamed(model, tmp_path / "m.onnx", CLASSES)
    images = _images(tmp_path / "imgs", NAMES)
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    assert invoke("predict", spaced, images, "-o", one, "--format", fmt)[0] == 0
    code, out = invoke("predict", spaced, images, "-o", two, "--format", fmt, "--topk", 3)
    assert code == 0, out
    ranked = read_ranked(two, fmt)
    assert sorted(p for p, _ in ranked) == sorted(NAMES)
    labels = CLASSES if fmt != "index" else ["0", "1", "2", "3"]
    assert all(len(c) == 3 and len(set(c)) == 3 and set(c) <= set(labels) for _, c in ranked)
    top1 = dict(read_predictions(one, fmt))
    assert {p: c[0] for p, c in ranked} == top1 == dict(read_predictions(two, fmt))


def test_the_default_format_is_still_name_then_class(model, tmp_path):
    images = _images(tmp_path / "imgs", ["a.png", "b c.png"])
    assert invoke("predict", model, images, "-o", tmp_path / "t.txt")[0] == 0
    lines = (tmp_path / "t.txt").read_text().splitlines()
    assert all(re.fullmatch(r"(a|b c)\.png (circle|square|triangle|ring)", line) for line in lines), lines


def test_a_line_of_no_known_format_is_an_error_naming_it(tmp_path):
    from clfkit.errors import DataError

    (tmp_path / "t.txt").write_text("a.png cat\njustone\n")
    with pytest.raises(DataError, match="line 2"):
        read_predictions(tmp_path / "t.txt")


@pytest.mark.parametrize("where", ["images", "inside", "cwd"])
def test_a_folder_output_suggests_a_path_that_is_accepted(model, tmp_path, monkeypatch, where):
    """Was: -o IMAGE_DIR suggested IMAGE_DIR/test.txt, which was then refused."""
    images = _images(tmp_path / "imgs", ["a.png"])
    (images / "sub").mkdir()
    folder = {"images": images, "inside": images / "sub", "cwd": tmp_path / "elsewhere"}[where]
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    msg = refused(["is a folder", "e.g. -o"], "predict", model, images, "-o", folder)
    suggested = re.search(r"e\.g\. -o (\S+)", msg).group(1)
    code, out = invoke("predict", model, images, "-o", suggested)
    assert code == 0 and Path(suggested).is_file(), out


def test_output_links_are_resolved(model, trained_run, tmp_path):
    """Was: -o link.txt whose target is a run's best.pt replaced the checkpoint."""
    import shutil

    images = _images(tmp_path / "imgs", ["a.png"])
    run = Path(shutil.copytree(trained_run.run_dir, tmp_path / "run"))
    (tmp_path / "notes.md").write_text("mine")
    links = {
        "ckpt.txt": run / "best.pt",
        "summary.txt": run / "summary.json",
        "notes.txt": tmp_path / "notes.md",
        "pic.png": run / "curves.png",
        "notes.png": tmp_path / "notes.md",
    }
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    before = {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in [*run.iterdir(), tmp_path / "notes.md"]
        if p.is_file()
    }
    refused(["ckpt.txt", "run folder", str(run)], "predict", model, images, "-o", tmp_path / "ckpt.txt")
    refused(["summary.txt", "run folder"], "predict", model, images, "-o", tmp_path / "summary.txt")
    refused(
        ["notes.txt", "notes.md", "predictions file"], "predict", model, images, "-o", tmp_path / "notes.txt"
    )
    refused(["pic.png", "run folder"], "compare", run, "-o", tmp_path / "pic.png")
    refused(["notes.png", "not a .png file"], "compare", run, "-o", tmp_path / "notes.png")
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in before}
    assert after == before
    (tmp_path / "old.txt").write_text(
        "a.png circle\n"
    )  # an earlier predictions file: written through its link
    (tmp_path / "latest.txt").symlink_to(tmp_path / "old.txt")
    assert invoke("predict", model, images, "-o", tmp_path / "latest.txt")[0] == 0
    assert (tmp_path / "latest.txt").is_symlink() and len(read_predictions(tmp_path / "old.txt")) == 1


def test_run_folder_markers_match_the_run_folder():
    from clfkit.util.output_file import RUN_FOLDER_MARKERS
    from clfkit.run.run_folder import METRICS_JSONL, SUMMARY_JSON

    assert set(RUN_FOLDER_MARKERS) == {METRICS_JSONL, SUMMARY_JSON}
