"""A resumed run must read the data it started on (clfkit.run.data_record): files added,
removed, edited in place or a class folder renamed since the interrupt are refused before
anything is written; unchanged data, generated data and old run folders without the record
resume; --allow-data-change continues and records it; `clfkit eval` on changed data warns."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clfkit.cli import cli
from clfkit.run.checkpoint import load_checkpoint, save_checkpoint
from clfkit.run.resume import ResumeError
from clfkit.train.build import build_data
from clfkit.run.data_record import DataChangedError, DataRecordWarning, eval_data_changed
from clfkit.train.trainer import resume_run, train
from conftest import set_recorded_epochs, tiny_recipe, write_image_folder


def _recipe(**changes):
    # a relative root: a copy of the run and its data in another folder reads the copy
    return tiny_recipe(
        data__source={"name": "folder", "root": "data"},
        data__image_size=16,
        data__val_fraction=0.25,
        train__epochs=1,
        train__batch_size=8,
        **changes,
    )


def _write_data(root: Path) -> Path:
    write_image_folder(root, per_class=6, size=16)
    # stored (not deflated) PNGs: an edit of the pixels keeps the file's size
    for p in root.rglob("*.png"):
        Image.open(p).save(p, compress_level=0)
    return root


def _made_resumable(run: Path) -> None:
    """As if the finished 1-epoch run had been stopped on its way to 2 epochs."""
    set_recorded_epochs(run, 2)
    (run / "summary.json").unlink()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """base/data (a cat/dog folder) and base/run: a 1-epoch run on it, resumable for one more."""
    base = tmp_path_factory.mktemp("base")
    _write_data(base / "data")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        res = train(_recipe(), base, quiet=True)
    finally:
        os.chdir(cwd)
    res.run_dir.rename(base / "run")
    _made_resumable(base / "run")
    return base


@pytest.fixture()
def here(base, tmp_path, monkeypatch):
    """A private copy of the run and its data, and the current directory there."""
    shutil.copytree(base / "data", tmp_path / "data", copy_function=shutil.copy2)
    shutil.copytree(base / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _edit_in_place(path: Path) -> None:
    """New pixels, same name, same size, same modification time."""
    st = path.stat()
    arr = np.asarray(Image.open(path)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


CHANGES = {
    "added": (
        lambda d: shutil.copy(d / "train/cat/cat_0.png", d / "train/cat/cat_new.png"),
        "1 file(s) added",
    ),
    "removed": (lambda d: (d / "test/dog/dog_1.png").unlink(), "1 file(s) removed"),
    "edited_in_place": (
        lambda d: _edit_in_place(d / "train/dog/dog_3.png"),
        "1 file(s) changed",
    ),  # content hashes in data_files.json: the file is found
    "rewritten": (
        lambda d: Image.new("RGB", (19, 16), "red").save(d / "train/dog/dog_2.png"),
        "1 file(s) changed",
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_files_refuse_the_resume_and_write_nothing(here, change):
    mutate, detail = CHANGES[change]
    mutate(here / "data")
    before = _snapshot(here / "run")
    with pytest.raises(DataChangedError) as e:
        resume_run(here / "run", quiet=True)
    msg = str(e.value)
    assert msg.startswith(
        f"cannot resume {here / 'run'}: the data at data changed since the run started ({detail})"
    )
    assert "Restore the data" in msg and "start a new run" in msg and "--allow-data-change" in msg, msg
    assert _snapshot(here / "run") == before


def test_renamed_class_folder_is_refused(here):
    for split in ("train", "test"):
        (here / "data" / split / "dog").rename(here / "data" / split / "wolf")
    before = _snapshot(here / "run")
    with pytest.raises(ResumeError, match="gone: 'dog'; new: 'wolf'"):
        resume_run(here / "run", quiet=True)
    assert _snapshot(here / "run") == before


def test_unchanged_data_resumes_and_the_record_carries_on(here):
    fingerprint = load_checkpoint(here / "run" / "last.pt")["data"]["fingerprint"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 40
    files = json.loads((here / "run" / "data_files.json").read_text())
    assert files["root"] == "data" and len(files["files"]) == 16 and "train/cat/cat_0.png" in files["files"]
    res = resume_run(here / "run", quiet=True)
    assert res.summary["epochs_run"] == 2
    assert res.summary["data"] == {"fingerprint": fingerprint, "changes_allowed": []}
    assert load_checkpoint(here / "run" / "best.pt")["data"]["fingerprint"] == fingerprint


def test_cli_refusal_and_allow_data_change(here):
    (here / "data/train/cat/cat_5.png").unlink()
    runner = CliRunner()
    res = runner.invoke(cli, ["train", "--resume", str(here / "run")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "the data at data changed since the run started (1 file(s) removed)" in res.output
    assert runner.invoke(cli, ["train", "--allow-data-change", "x.yaml"]).exit_code == 2
    res = runner.invoke(cli, ["train", "--resume", str(here / "run"), "--allow-data-change"])
    assert res.exit_code == 0, res.output
    assert (
        "warning: the data at data changed since the run started (1 file(s) removed); continuing on it "
        "from epoch 2 (--allow-data-change)" in res.output
    )
    summary = json.loads((here / "run" / "summary.json").read_text())
    (allowed,) = summary["data"]["changes_allowed"]
    assert allowed["after_epoch"] == 1 and allowed["detail"] == "1 file(s) removed"
    assert allowed["now"] == summary["data"]["fingerprint"] != allowed["was"]
    files = json.loads((here / "run" / "data_files.json").read_text())["files"]  # the data from now on
    assert len(files) == 15 and "train/cat/cat_5.png" not in files


def test_run_without_a_record_resumes_with_one_warning(here):
    state = load_checkpoint(here / "run" / "last.pt")
    del state["data"]
    save_checkpoint(
        here / "run" / "last.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")}
    )
    with pytest.warns(DataRecordWarning, match="does not record which data it trained on") as caught:
        res = resume_run(here / "run", quiet=True)
    assert len([w for w in caught if "record" in str(w.message)]) == 1
    assert res.summary["data"]["fingerprint"] is not None  # recorded from now on


def test_eval_on_changed_data_warns_and_says_so(here):
    state = load_checkpoint(here / "run" / "last.pt")
    recipe = _recipe()
    assert eval_data_changed(state, build_data(recipe), recipe.data.source, None) is False
    shutil.copy(here / "data/test/cat/cat_0.png", here / "data/test/cat/cat_9.png")
    with pytest.warns(DataRecordWarning, match="the data at data changed since this run trained on it"):
        res = CliRunner().invoke(cli, ["eval", str(here / "run")])
    assert res.exit_code == 0, res.output
    assert json.loads((here / "run" / "eval_test.json").read_text())["data_changed"] is True


def test_generated_data_records_no_fingerprint(trained_run):
    state = torch.load(trained_run.run_dir / "last.pt", weights_only=True)
    assert state["data"] == {"fingerprint": None, "changes_allowed": []}
    assert not (trained_run.run_dir / "data_files.json").exists()


def test_disk_storage_through_the_cache_is_checked(tmp_path, monkeypatch):
    """data.storage: disk decodes into (and, resuming, reads from) a cache entry: the record
    is the entry's fingerprint on the first run and the hit's on the resume."""
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    _write_data(tmp_path / "data")
    res = train(_recipe(data__storage="disk"), tmp_path / "runs", quiet=True)
    run = res.run_dir
    assert len(list((tmp_path / "cache").glob("*-*/train.images.npy"))) == 1
    fingerprint = load_checkpoint(run / "last.pt")["data"]["fingerprint"]
    assert isinstance(fingerprint, str)
    _made_resumable(run)
    _edit_in_place(tmp_path / "data/test/cat/cat_1.png")
    with pytest.raises(DataChangedError, match=r"1 file\(s\) changed"):
        resume_run(run, quiet=True)
    shutil.rmtree(tmp_path / "data")
    _write_data(tmp_path / "data")  # the same images again: new files and times, the same bytes
    assert resume_run(run, quiet=True).summary["data"]["fingerprint"] == fingerprint
