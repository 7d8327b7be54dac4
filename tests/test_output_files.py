"""Red team 19 (rtB): the data path, resume, export and predict through the real CLI."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from clfkit.util import atomic as cio

ROOT = Path(__file__).resolve().parents[1]


def _clfkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "clfkit", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


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
        res = subprocess.run([sys.executable, "-m", "clfkit", "predict", str(model), str(tmp_path / "imgs"),
                              "-o", "/dev/stdout"], stdout=f, stderr=subprocess.PIPE, text=True, timeout=300,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 3
    assert "wrote 3 predictions" in res.stderr


# --------------------------------------------------------------------------- Ctrl-C mid-epoch
def test_ctrl_c_mid_epoch_says_it_saved_not_that_a_step_broke(monkeypatch, tmp_path):
    """The mid-epoch stop (a step finished, last.pt saved, Interrupted raised) was caught by the
    'error after Ctrl-C' path and reworded as 'stopped ... while a step was running
    (Interrupted: ...; the signal stops the compiler torch.compile runs too)' without compile."""
    from conftest import sigint_at_step, tiny_recipe

    from clfkit.train import trainer
    from clfkit.util.signals import Interrupted

    sigint_at_step(monkeypatch, 3)
    with pytest.raises(Interrupted) as stop:
        trainer.train(tiny_recipe(train__epochs=2), tmp_path, quiet=True)
    message = str(stop.value)
    assert "while a step was running" not in message and "compile" not in message, message
    assert "saved" in message and (tmp_path / "tiny" / "last.pt").exists()
    assert message.count("SIGINT received") == 1, message


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


def test_resume_refuses_a_recipe_yaml_edited_since_the_run_started(stopped_run):
    """--resume trains last.pt's recipe: an edited recipe.yaml was silently ignored, and the run
    folder then recorded an lr and epoch count its run never used."""
    from clfkit.run.resume import ResumeError
    from clfkit.train.trainer import resume_run

    recipe = stopped_run / "recipe.yaml"
    original = recipe.read_bytes()
    recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.5").replace("epochs: 2", "epochs: 9"))
    last = (stopped_run / "last.pt").read_bytes()
    res = _clfkit("train", "--resume", stopped_run, cwd=stopped_run.parent)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "was edited since the run started (optim.lr: 0.003 -> 0.5; train.epochs: 2 -> 9)" in res.stderr
    assert "clfkit train " + str(recipe) in res.stderr
    assert (stopped_run / "last.pt").read_bytes() == last and not (stopped_run / "summary.json").exists()
    recipe.write_text("train: [\n")
    with pytest.raises(ResumeError, match="no longer reads as the run's recipe"):
        resume_run(stopped_run, quiet=True)
    recipe.unlink()  # deleted: written back from last.pt, and the run goes on
    resume_run(stopped_run, quiet=True)
    assert recipe.read_bytes() == original and (stopped_run / "summary.json").exists()


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


# --------------------------------------------------------------------------- read_file (open + fstat + read)
def test_read_file_keeps_reading_after_a_short_read(tmp_path, monkeypatch):
    """One read() was taken as the whole file unless it filled the buffer: on a filesystem that
    returns less than asked (FUSE direct_io, some network mounts) every image came back cut
    and was skipped as truncated. Path.read_bytes, which it replaced, loops."""
    from PIL import Image

    from clfkit.data import image_files

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 1000)))  # a short-read filesystem
    assert image_files.read_file(path) == path.read_bytes()
    assert image_files.decode(path, (8, 8), 3).shape == (8, 8, 3)


# --------------------------------------------------------------------------- files a folder dataset leaves out
def test_training_says_which_files_it_leaves_out_for_their_extension(tmp_path):
    """A phone's .heic photos (or .avif, .jpe) beside its .jpg ones were dropped without a word:
    the run trained on part of the class. Said on every run, cache hit or not; not data."""
    from conftest import write_image_folder

    root = write_image_folder(tmp_path / "data", per_class=6, size=16)
    cls = sorted(p for p in (root / "train").iterdir())[0]
    (cls / "IMG_0001.heic").write_bytes(b"heic bytes")
    (root / "test").mkdir(exist_ok=True)
    (root / "test" / "labels.csv").write_text("x")
    shutil.copy(next(cls.glob("*.png")), root / "train" / "stray.png")  # an image in no class folder
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\ndata: {{source: {{name: folder, root: {root}}}, image_size: 8}}\n"
                      f"model: {{name: cnn, blocks: [{{channels: 4}}]}}\ntrain: {{epochs: 1, batch_size: 8}}\n")
    env_cache = {"CLFKIT_CACHE": "1", "CLFKIT_CACHE_DIR": str(tmp_path / "cache")}
    for attempt in ("decoded", "from the cache"):
        res = subprocess.run([sys.executable, "-m", "clfkit", "train", str(recipe), "--out", str(tmp_path / attempt)],
                             env={**os.environ, "PYTHONPATH": str(ROOT), **env_cache}, capture_output=True, text=True,
                             timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        lines = [line for line in res.stderr.splitlines() if "not read" in line]
        assert len(lines) == 2, res.stderr
        assert lines[0].startswith("warning: 1 file(s) under ") and "their extension is not an image's" in lines[0]
        assert f"train/{cls.name}/IMG_0001.heic" in lines[0]
        assert lines[1].startswith("warning: 2 file(s) under ") and "in no class" in lines[1]
        assert "train/stray.png, test/labels.csv" in lines[1]
    assert "decoded images from cache" in res.stdout


# --------------------------------------------------------------------------- predict over linked folders
def test_predict_follows_linked_folders_as_training_does_and_names_loops(trained_run, tmp_path):
    """A folder of links to image folders (how datasets are often assembled; training follows
    them) got predictions for none of the linked images, and no word about them."""
    from PIL import Image

    from clfkit.deploy.export import export_run
    from clfkit.deploy.batch_predict import predict_folder

    model = export_run(trained_run.run_dir, tmp_path / "m.onnx").path
    elsewhere = tmp_path / "elsewhere" / "bees"
    elsewhere.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (0, 80 * i, 0)).save(elsewhere / f"b{i}.png")
    photos = tmp_path / "photos"
    (photos / "ants").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(photos / "ants" / "a.png")
    (photos / "bees").symlink_to(elsewhere, target_is_directory=True)
    (photos / "ants" / "up").symlink_to(photos, target_is_directory=True)  # a loop
    (photos / "bees_again").symlink_to(elsewhere, target_is_directory=True)  # read once only
    res = predict_folder(model, photos, tmp_path / "test.txt")
    names = [line.split(" ")[0] for line in (tmp_path / "test.txt").read_text().splitlines()]
    assert names == ["ants/a.png", "bees/b0.png", "bees/b1.png", "bees/b2.png"]
    assert [p for p, _ in res.skipped] == ["ants/up", "bees_again"]
    assert all("not followed" in why for _, why in res.skipped)


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
