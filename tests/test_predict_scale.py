"""predict on big folders: a lazy walk in the same order as before, memory that does not grow
with the folder, nothing half-written on an error or Ctrl-C, --workers and the progress bar."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clfkit.data import image_files
from clfkit.deploy import batch_predict as predict_mod
from clfkit.cli import cli
from clfkit.deploy.export import export_run
from clfkit.deploy.batch_predict import predict_folder, walk_files


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory):
    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("sc") / "m.onnx").path


def _folder(root, n, size=12):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
    return root


def test_lazy_walk_keeps_the_sorted_relative_path_order(tmp_path):
    names = [
        "b.png",
        "b/x.png",
        "b.c/y.png",
        "bz.png",
        "a b/c.jpg",
        "a/b/c/d.png",
        "a/c.png",
        "A.PNG",
        "a-/z.png",
        "notes.txt",
        ".hidden/q.png",
        "a/.q.png",
        "é/ü.png",
        "b0.png",
    ]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    images, others = image_files.list_images(tmp_path)
    walked = list(walk_files(tmp_path))
    key = lambda p: p.relative_to(tmp_path).as_posix()  # noqa: E731
    assert [key(p) for p in walked] == sorted(key(p) for p in images + others)
    assert {key(p) for p in walked} == {key(p) for p in images + others}


def _peak_python_memory(model, folder, out) -> int:
    tracemalloc.start()
    try:
        predict_folder(model, folder, out, batch_size=16, workers=2)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_folder(model, tmp_path, monkeypatch):
    small, big = _folder(tmp_path / "s", 48), _folder(tmp_path / "b", 400)
    _peak_python_memory(model, small, tmp_path / "warm.txt")  # first-call imports and caches
    peaks = [_peak_python_memory(model, d, tmp_path / "t.txt") for d in (small, big)]
    # 8x the images: the peak (buffers of two batches, one chunk of paths) stays the same size
    assert peaks[1] < 1.5 * peaks[0] + 200_000, peaks
    # and the walk runs at most two batches ahead of inference
    seen, ahead = [0], []
    real_walk, real_batches = predict_mod.walk_files, predict_mod._batches

    def counting_walk(*args):
        for p in real_walk(*args):
            seen[0] += 1
            yield p

    def watching_batches(*a, **k):
        for item in real_batches(*a, **k):
            ahead.append(seen[0])
            yield item

    monkeypatch.setattr(predict_mod, "walk_files", counting_walk)
    monkeypatch.setattr(predict_mod, "_batches", watching_batches)
    assert predict_folder(model, big, tmp_path / "t2.txt", batch_size=16).written == 400
    assert ahead[0] <= 2 * 16 + 1 and (tmp_path / "t2.txt").read_text() == (tmp_path / "t.txt").read_text()


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interruption_leaves_the_old_output_and_no_temp_file(model, tmp_path, monkeypatch, error):
    folder = _folder(tmp_path / "imgs", 40)
    out = tmp_path / "test.txt"
    out.write_text("earlier predictions\n")
    calls = []
    real = predict_mod.OnnxClassifier.__call__

    def failing(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise error("stop")
        return real(self, batch)

    monkeypatch.setattr(predict_mod.OnnxClassifier, "__call__", failing)
    with pytest.raises(error):
        predict_folder(model, folder, out, batch_size=8)
    assert out.read_text() == "earlier predictions\n"
    assert sorted(os.listdir(tmp_path)) == ["imgs", "test.txt"]


def test_cli_workers_and_progress(model, tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs", 30)
    out = tmp_path / "t.txt"
    r = CliRunner().invoke(
        cli, ["predict", str(model), str(folder), "-o", str(out), "--workers", "3", "--batch-size", "7"]
    )
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 30
    shown = predict_folder(model, folder, tmp_path / "u.txt", batch_size=7, workers=1, progress=True)
    assert shown.written == 30 and (tmp_path / "u.txt").read_text() == out.read_text()
