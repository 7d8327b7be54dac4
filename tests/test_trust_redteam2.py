"""Red team of 2026-12-01's features (data.storage and the data cache, class weights,
mixup_cutmix, layer-wise LRs, export/eval tracking): the defects found by misuse, each as the
class it belongs to."""
from __future__ import annotations

import fcntl
import os
import time

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from conftest import refused, tiny_recipe, write_image_folder
from clfkit.train.build import build_data
from clfkit.components.losses import WeightedCrossEntropy
from clfkit.data import cache, disk_storage as disk_spill


def _recipe_file(tmp_path, **changes):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**changes).to_dict()))
    return path


# --------------------------------------------------------------------------- non-finite numbers
@pytest.mark.parametrize("field, value, words", [
    ("loss.class_weights", "[1, .inf, 1, 1]", ["loss.class_weights", "finite"]),
    ("loss.class_weights", "[1, .nan, 1, 1]", ["loss.class_weights", "finite"]),
    # any component's float argument: Beta(inf, inf) trained without a word before
    ("regularizers", "[{name: mixup_cutmix, mixup_alpha: .inf}]", ["regularizers.0.mixup_alpha", "finite"]),
    ("regularizers", "[{name: grad_clip, max_norm: .nan}]", ["regularizers.0.max_norm", "finite"]),
])
def test_inf_and_nan_arguments_are_refused_at_load(tmp_path, field, value, words):
    # before: class_weights [1, inf, 1] started training and stopped at step 1 as a NaN loss
    # blaming the learning rate; mixup_alpha: .inf trained silently
    recipe = _recipe_file(tmp_path)
    refused(words, "train", recipe, "--set", f"{field}={value}", "--out", tmp_path / "runs", "--quiet",
            max_lines=None)
    assert not (tmp_path / "runs").exists()


def test_a_batch_of_only_zero_weight_classes_has_loss_zero_not_nan():
    # before: class_weights [0, 1, 1] with a batch of class 0 only: 0 / 0, and the run stopped
    # with "non-finite training loss ... the learning rate is probably too high"
    torch.manual_seed(0)
    loss = WeightedCrossEntropy([0.0, 1.0, 1.0], label_smoothing=0.1)
    logits = torch.randn(4, 3, requires_grad=True)
    zeros = torch.zeros(4, dtype=torch.long)
    # index targets (smoothing or not), and soft targets (mixup) without smoothing
    for fn, targets in ((loss, zeros), (WeightedCrossEntropy([0.0, 1.0, 1.0], 0.0), F.one_hot(zeros, 3).float())):
        value = fn(logits, targets)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
        logits.grad = None
    # and a batch with weight keeps torch's weighted mean
    y = torch.tensor([0, 1, 2, 1])
    expected = F.cross_entropy(logits, y, weight=loss.weight, label_smoothing=0.1)
    assert torch.allclose(loss(logits, y), expected)


# --------------------------------------------------------------------------- the data cache
@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entries(base):
    return sorted(p for p in base.iterdir() if not p.name.startswith("."))


def _folder_recipe(root, **kw):
    return tiny_recipe(data__source={"name": "folder", "root": str(root)}, data__image_size=8,
                       data__val_fraction=0.25, data__storage="disk", **kw)


def test_an_entry_a_disk_run_reads_is_not_deleted_by_a_newer_one(tmp_path, cache_on):
    # before: run A trained from entry E1 (disk storage); the user edited one image and started
    # run B, which wrote E2 and deleted E1: A's loader workers then died with FileNotFoundError
    root = write_image_folder(tmp_path / "data", per_class=4, size=10)
    first = build_data(_folder_recipe(root))
    (e1,) = _entries(cache_on)
    # another process reading E1 (a lock of its own, as a running training holds)
    fd = os.open(e1 / "index.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.close(cache._HELD.pop(e1))  # this process is done with it: only the other one holds E1
    try:
        Image.new("RGB", (10, 13), (9, 9, 9)).save(root / "train/cat/cat_0.png")
        second = build_data(_folder_recipe(root))
        assert len(_entries(cache_on)) == 2 and e1.is_dir()
        assert first.train.images[:].shape == second.train.images[:].shape  # E1 still reads
    finally:
        os.close(fd)
    for entry in list(cache._HELD):
        os.close(cache._HELD.pop(entry))
    build_data(_folder_recipe(root))  # a later run (a hit) deletes E1, held by no one now
    assert _entries(cache_on) == [p for p in _entries(cache_on) if p != e1] and not e1.exists()


def test_temp_folders_left_by_a_killed_run_are_removed(tmp_path, monkeypatch):
    # before: kill -9 during the first decode left .<group>-decoding.*.tmp (as large as the
    # decoded data) in the cache dir forever
    stale = tmp_path / ".g-decoding.abc.tmp"
    stale.mkdir()
    (stale / ".train.decoding.npy").write_bytes(b"x" * 100)
    live = disk_spill.locked_temp_folder(tmp_path, ".g-decoding.", ".tmp")  # a running decode's
    fresh = tmp_path / ".g-decoding.new.tmp"  # just made by another process, not locked yet
    fresh.mkdir()
    old = time.time() - 2 * disk_spill.STALE_AFTER_S
    for folder in (stale, live):
        os.utime(folder, (old, old))
    disk_spill._LOCKS.pop(live)  # as if another process held it (its lock stays open)
    disk_spill.remove_stale(tmp_path, ".g-*.tmp")
    assert not stale.exists() and live.is_dir() and fresh.is_dir()


# --------------------------------------------------------------------------- MLflow tracking
@pytest.mark.parametrize("record", ['{"mlflow_run_id": "deadbeef"}', "{", '{"other": 1}'])
def test_resume_with_an_edited_tracking_json_names_the_file(tmp_path, monkeypatch, mlflow_store, record):
    # before: a KeyError / JSONDecodeError / MlflowException traceback on --resume
    from clfkit.run.tracking import TRACKING_FILE, MLflowTracker, TrackingError

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    (tmp_path / TRACKING_FILE).write_text(record)
    with pytest.raises(TrackingError, match="cannot continue the MLflow run recorded in .*tracking.json"):
        MLflowTracker.open(tmp_path, {}, resuming=True)
    assert (tmp_path / TRACKING_FILE).read_text() == record


def test_a_tracking_store_that_fails_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    # before: MLFLOW_TRACKING_URI=file:///... (MLflow's retired file store; MlflowException on
    # the first call) was a traceback from inside MLflow, after the run folder was made.
    # The store's failure is simulated: MLflow's own takes seconds to import and raise.
    from clfkit.run import tracking

    def store_down():
        raise RuntimeError("The filesystem tracking backend is in maintenance mode")

    monkeypatch.setattr(tracking, "_client_and_experiment", store_down)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    refused(["train.track", "mlflow", "tracking store", str(tmp_path / "mlruns"), "maintenance mode",
             "MLFLOW_TRACKING_URI"],
            "train", _recipe_file(tmp_path), "--track", "mlflow", "--out", tmp_path / "runs", "--quiet")
    assert not (tmp_path / "runs").exists()
