"""The trainer end to end on CPU: learns, writes the run folder, checkpoints load safely."""

from __future__ import annotations

import json

import pytest
import torch

from clfkit.run.checkpoint import load_checkpoint, model_from_checkpoint
from clfkit.errors import TrainingError
from clfkit.train.engine.batches import epoch_order
from clfkit.train.engine.runtime import resolve_runtime
from clfkit.train.trainer import train

from conftest import tiny_recipe


def _plain(recipe):
    """A recipe's train.device, train.precision, train.channels_last: what resolve_runtime takes."""
    t = recipe.train
    return t.device, t.precision, t.channels_last


def test_tiny_run_learns_above_chance(trained_run):
    s = trained_run.summary
    assert s["num_classes"] == 4
    assert s["best_val_acc"] > 0.5 and s["test_acc"] > 0.5  # chance is 0.25
    assert s["device"] == "cpu" and s["precision"] == "fp32"
    for key in ("best_val_acc", "best_epoch", "test_acc", "epochs", "wall_seconds", "device", "params"):
        assert key in s


def test_run_folder_contents(trained_run):
    run = trained_run.run_dir
    for name in ("recipe.yaml", "metrics.jsonl", "best.pt", "last.pt", "summary.json", "samples.npy"):
        assert (run / name).is_file(), name
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(rows[0])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert len(summary["per_class"]) == 4 and sum(r["support"] for r in summary["per_class"]) == 96
    assert len(summary["normalize"]["mean"]) == 3 and all(0 < v < 1 for v in summary["normalize"]["std"])


def test_resolved_recipe_reloads(trained_run):
    from clfkit.recipe import load_recipe

    r = load_recipe(trained_run.run_dir / "recipe.yaml")
    assert r.model["norm"]["name"] == "batch" and r.train.epochs == 4


def test_checkpoint_loads_weights_only_and_rebuilds(trained_run):
    state = torch.load(trained_run.run_dir / "best.pt", weights_only=True)
    assert state["class_names"] == ["circle", "square", "triangle", "ring"]
    assert state["input"]["channels"] == 3 and state["input"]["image_size"] == [16, 16]
    model = model_from_checkpoint(load_checkpoint(trained_run.run_dir / "best.pt"))
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert model(x).shape == (2, 4)
    last = torch.load(trained_run.run_dir / "last.pt", weights_only=True)
    assert "optimizer" in last and last["epoch"] == 4


def test_not_a_checkpoint(tmp_path):
    from clfkit.errors import ModelFileError

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"hello")
    with pytest.raises(ModelFileError, match="is not a clfkit checkpoint"):
        load_checkpoint(bad)
    torch.save({"a": torch.zeros(1)}, bad)
    with pytest.raises(ModelFileError, match="not a clfkit checkpoint"):
        load_checkpoint(bad)


def test_runs_never_overwrite(tmp_path):
    r = tiny_recipe(
        train__epochs=1, data__source__train_size=64, data__source__val_size=16, data__source__test_size=0
    )
    a = train(r, tmp_path, quiet=True).run_dir
    b = train(r, tmp_path, quiet=True).run_dir
    assert a.name == "tiny" and b.name == "tiny-2"


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU errors")
def test_gpu_only_settings_refused_on_cpu():
    with pytest.raises(TrainingError, match="no CUDA GPU"):
        resolve_runtime(*_plain(tiny_recipe(train__device="cuda")))
    with pytest.raises(TrainingError, match="bf16 needs a CUDA GPU"):
        resolve_runtime(*_plain(tiny_recipe(train__precision="bf16")))


def test_val_carved_from_train_when_missing(tmp_path):
    from clfkit.train.build import build_data

    r = tiny_recipe(data__source__val_size=0, data__val_fraction=0.25)
    s = build_data(r)
    assert len(s.val) == 120 and len(s.train) == 360
    counts = torch.bincount(s.val.labels, minlength=4)
    assert counts.tolist() == [30, 30, 30, 30]  # stratified


def test_softmax_model_warns(tmp_path):
    import torch.nn as nn

    from clfkit import registry

    @registry.register("model", "_softmax_linear")
    def _softmax_linear(num_classes: int, in_chans: int, image_size: tuple) -> nn.Module:
        return nn.Sequential(
            nn.Flatten(), nn.Linear(in_chans * image_size[0] * image_size[1], num_classes), nn.Softmax(dim=1)
        )

    try:
        r = tiny_recipe(model={"name": "_softmax_linear"}, train__epochs=1)
        with pytest.warns(UserWarning, match="already probabilities"):
            train(r, tmp_path, quiet=True)
    finally:
        registry.REGISTRY.remove("model", "_softmax_linear")


@pytest.mark.parametrize(
    "n,batch_size,drop_last", [(10, 4, False), (10, 4, True), (3, 4, True), (8, 4, True)]
)
@pytest.mark.parametrize("per_image", [False, True], ids=["in-memory", "per-image"])
def test_both_batch_paths_yield_the_scheduled_batches(n, batch_size, drop_last, per_image):
    """The schedule counts num_batches() steps per epoch; both batch paths must yield exactly those
    (a split smaller than the batch trains one batch even with drop_last)."""
    from clfkit.data import ImageSet
    from clfkit.train.engine.batches import num_batches, train_batches

    data = ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    identity = [lambda image: {"image": image}] if per_image else []
    sizes = [
        len(y)
        for _, y in train_batches(
            data,
            batch_size,
            0,
            0,
            drop_last=drop_last,
            device=torch.device("cpu"),
            per_image=identity,
            workers=0,
        )
    ]
    assert len(sizes) == num_batches(n, batch_size, drop_last)
    assert sum(sizes) == (n if not drop_last or n < batch_size else n - n % batch_size)
    resumed = [
        len(y)
        for _, y in train_batches(
            data,
            batch_size,
            0,
            0,
            drop_last=drop_last,
            device=torch.device("cpu"),
            per_image=identity,
            workers=0,
            start_batch=1,
        )
    ]
    assert resumed == sizes[1:]


def test_run_log_names_the_data_path():
    """Users see when a per-image transform sends batches through CPU loader workers."""
    from clfkit.train.build import build_augmentations
    from clfkit.train.engine.runtime import Runtime
    from clfkit.train.prepare import _data_path

    names: dict = {}
    per_image, batched = build_augmentations(
        tiny_recipe(data__augment=["HorizontalFlip", {"name": "ColorJitter"}]), names
    )
    assert len(per_image) == 1 and len(batched) == 1
    gpu = Runtime(torch.device("cuda"), "bf16", True)
    line = _data_path(names, gpu, workers=4)
    assert (
        "host memory" in line
        and "4 loader worker(s): ColorJitter" in line
        and "on cuda: HorizontalFlip" in line
    )
    assert "in cuda memory" in _data_path({"batched": ["HorizontalFlip"]}, gpu, workers=4)
