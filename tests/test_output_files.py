"""Where clfkit writes (clfkit.util.atomic and the commands' outputs): into a FIFO, through a
symlink, into a pipe, never over a run file or a file that is no picture.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clfkit.util import atomic as cio
from conftest import invoke, refused

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


def _read_fifo(fifo: Path, into: list) -> threading.Thread:
    t = threading.Thread(target=lambda: into.append(fifo.read_bytes()), daemon=True)
    t.start()
    return t


# --------------------------------------------------------------------------- outputs that are not files
def test_writing_to_a_fifo_writes_into_it_and_leaves_the_fifo(tmp_path):
    """A rename over -o /dev/null (as root) had put a plain file in place of the device; a
    FIFO stands in for it here."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    cio.write_text(fifo, "hello\n")
    reader.join(10)
    assert got == [b"hello\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_writing_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "pred.txt"
    target.write_text("old\n")
    link = tmp_path / "latest.txt"
    link.symlink_to(target)
    cio.write_text(link, "new\n")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new\n"


def test_predict_into_a_pipe_gets_only_prediction_lines(trained_run, tmp_path):
    from clfkit.deploy.export import export_run
    from PIL import Image

    model = export_run(trained_run.run_dir, tmp_path / "m.onnx").path
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = _read_fifo(fifo, got)
    res = _clfkit("predict", model, tmp_path / "imgs", "-o", fifo, cwd=tmp_path)
    reader.join(10)
    assert res.returncode == 0, res.stderr
    assert [line.split(" ")[0] for line in got[0].decode().splitlines()] == ["0.png", "1.png", "2.png"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # with stdout as the output, the summary goes to stderr, not among the predictions
    with open(tmp_path / "out.txt", "w") as f:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "clfkit",
                "predict",
                str(model),
                str(tmp_path / "imgs"),
                "-o",
                "/dev/stdout",
            ],
            stdout=f,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=tmp_path,
        )
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 3
    assert "wrote 3 predictions" in res.stderr


def test_a_model_path_that_is_a_fifo_is_named_so_not_missing(tmp_path):
    """It said 'does not exist' for a FIFO (or /dev/zero) that plainly exists."""
    from clfkit.errors import ModelFileError
    from clfkit.deploy.predictor import load_onnx

    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match=r"model.onnx is a named pipe \(FIFO\), not a model file"):
        load_onnx(fifo)
    with pytest.raises(ModelFileError, match="does not exist"):
        load_onnx(tmp_path / "gone.onnx")


# --------------------------------------------------------------------------- compare -o
def test_compare_never_writes_over_a_run_file_or_a_file_that_is_no_picture(trained_run, tmp_path):
    """`compare A B -o A/best.pt` replaced best.pt with a PNG, as did -o notes.txt."""

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
