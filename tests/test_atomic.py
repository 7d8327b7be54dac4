"""Atomic writes: a crash at any moment leaves the previous good file.

Crashes are simulated three ways: an exception in the middle of writing (Python-level
failure), ENOSPC from the disk, and a real SIGKILL of a subprocess between writing the temp
file and renaming it.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clfkit.util import atomic as cio
from clfkit.run.checkpoint import load_checkpoint, save_checkpoint
from clfkit.util.atomic import WriteError

ROOT = Path(__file__).resolve().parents[1]


def _no_temps(folder: Path) -> bool:
    return not list(folder.glob(".*.tmp"))


class Crash(BaseException):
    """Stands in for anything that ends the write early (KeyboardInterrupt, a bug...)."""


@pytest.mark.parametrize("writer", ["text", "json", "bytes", "checkpoint", "append"])
def test_failure_mid_write_keeps_previous_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "out.file"
    write = {
        "text": lambda v: cio.write_text(path, v),
        "json": lambda v: cio.write_json(path, {"v": v}),
        "bytes": lambda v: cio.write_bytes(path, v.encode()),
        "checkpoint": lambda v: save_checkpoint(path, {"v": v, "w": torch.ones(1000)}),
        "append": lambda v: cio.append_line(path, v),
    }[writer]
    write("old")
    before = path.read_bytes()

    real_fsync = os.fsync

    def crash_on_file_fsync(fd):  # the temp file is fully written, not yet renamed
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            raise Crash()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", crash_on_file_fsync)
    with pytest.raises(Crash):
        write("new" * 1000)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert _no_temps(tmp_path)


def test_disk_full_is_a_clear_error_and_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(WriteError, match="disk is full.*previous file.*intact"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert _no_temps(tmp_path)


def test_unwritable_folder_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        target = blocker / "sub" / "out.json"  # a file where a folder should be: fails even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out.json"
    with pytest.raises(WriteError, match="cannot write"):
        cio.write_json(target, {})


def test_append_line_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "trai')  # what a crash mid-append used to leave
    cio.append_line(path, '{"epoch": 2}')
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import torch
    from clfkit.run.checkpoint import save_checkpoint
    path = sys.argv[1]
    save_checkpoint(path, {"epoch": 1, "w": torch.zeros(100_000)})
    real_replace = os.replace
    def die(src, dst):  # new bytes are on disk in the temp file; the rename never happens
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = die
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(100_000)})
""")


def test_sigkill_during_checkpoint_save_leaves_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(path)], env=env, capture_output=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.zeros(100_000))
    # the orphaned temp file is what resume cleans up
    assert not _no_temps(tmp_path)
    assert cio.remove_stale_temps(tmp_path) and _no_temps(tmp_path)


def test_every_run_artifact_goes_through_atomic_writes(trained_run, tmp_path, monkeypatch):
    """Export and predict write their outputs only through clfkit.util.atomic.atomic_open, and the run
    folder holds no leftover temp files."""
    from clfkit.deploy.export import export_run
    from clfkit.deploy.batch_predict import predict_folder

    run = trained_run.run_dir
    assert _no_temps(run)
    for name in ("last.pt", "best.pt", "summary.json", "metrics.jsonl", "recipe.yaml", "samples.npy"):
        assert (run / name).is_file(), name

    opened: list[Path] = []
    real = cio.atomic_open

    def spy(path, *a, **kw):
        opened.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(cio, "atomic_open", spy)
    import clfkit.deploy.batch_predict as P

    monkeypatch.setattr(P, "atomic_open", spy)
    onnx = tmp_path / "m.onnx"
    export_run(run, onnx)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(imgs / "a.png")
    out = tmp_path / "test.txt"
    predict_folder(onnx, imgs, out)
    assert onnx in opened and out in opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "m.onnx", "test.txt"]


def test_atomic_files_get_normal_permissions(tmp_path):
    """mkstemp makes 0600 files; outputs must get the usual 0666 & ~umask instead."""
    import os
    import stat

    from clfkit.util.atomic import write_text

    mask = os.umask(0)
    os.umask(mask)
    write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
