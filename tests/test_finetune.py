"""Fine-tuning: weights in with a receipt (init:, the timm model's weights:)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from clfkit.cli import cli
from clfkit.recipe import validate_recipe
from clfkit.train.trainer import train
from conftest import write_image_folder

CNN = {"name": "cnn", "blocks": [{"channels": 8, "pool": "max"}, {"channels": 16, "pool": "max"}]}


def folder_recipe(root, name, model=CNN, **extra):
    return {
        "name": name,
        "seed": 0,
        "data": {"source": {"name": "folder", "root": str(root)}, "image_size": 16, "val_fraction": 0.25},
        "model": model,
        "optim": {"name": "adam", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8},
        **extra,
    }


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """Run A: 3 classes (the flowers5 stand-in)."""
    tmp = tmp_path_factory.mktemp("a")
    root = write_image_folder(tmp / "three", classes=("a", "b", "c"), per_class=8)
    return train(validate_recipe(folder_recipe(root, "A")), tmp / "runs", quiet=True).run_dir


def test_init_from_a_run_folder_reinitializes_only_the_head(run_a, tmp_path, capsys):
    root = write_image_folder(tmp_path / "two", classes=("ants", "bees"), per_class=8)
    res = train(validate_recipe(folder_recipe(root, "B", init=str(run_a))), tmp_path / "runs")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("init:"))
    assert "re-initialized (classifier" in line and "3 -> 2 classes" in line, line
    receipt = json.loads((res.run_dir / "weights.json").read_text())["receipts"][0]
    reinit = {r["tensor"] for r in receipt["reinitialized"]}
    assert reinit and all(
        t.startswith(receipt["head"].split()[1].split(",")[0].rsplit(".", 1)[0]) for t in reinit
    )
    assert len(receipt["loaded"]) + len(reinit) == receipt["total"] and receipt["unexpected"] == []
    # loaded tensors equal run A's
    a = torch.load(run_a / "best.pt", weights_only=True)["model"]
    first = receipt["loaded"][0]
    start = json.loads((res.run_dir / "weights.json").read_text())
    assert first in a and start["receipts"][0]["source"].endswith("best.pt")


def test_init_with_another_architecture_is_a_clear_cli_error(run_a, tmp_path):
    root = write_image_folder(tmp_path / "two", classes=("ants", "bees"), per_class=8)
    f = tmp_path / "b.yaml"
    f.write_text(yaml.safe_dump(folder_recipe(root, "B", model={"name": "mlp"}, init=str(run_a))))
    res = CliRunner().invoke(cli, ["train", str(f), "--out", str(tmp_path / "runs"), "--quiet"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "init" in res.output and "best.pt matches only" in res.output and "init_min_match" in res.output
    f.write_text(
        yaml.safe_dump(folder_recipe(root, "B", model={"name": "mlp"}, init=str(run_a), init_min_match=0.01))
    )
    res = CliRunner().invoke(cli, ["train", str(f), "--out", str(tmp_path / "runs2"), "--quiet"])
    assert "matches only 0 of" in res.output  # nothing matches at all: still refused


def _timm_1000(tmp_path, suffix):
    timm = pytest.importorskip("timm")
    sd = timm.create_model("resnet10t", pretrained=False, num_classes=1000).state_dict()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def test_timm_1000_class_state_dict_loads_with_only_the_head_reinitialized(tmp_path, capsys):
    path = _timm_1000(tmp_path, ".safetensors")
    root = write_image_folder(tmp_path / "two", classes=("ants", "bees"), per_class=4)
    recipe = folder_recipe(root, "T", model={"name": "timm", "arch": "resnet10t", "weights": str(path)})
    recipe["data"]["image_size"] = 32
    res = train(validate_recipe(recipe), tmp_path / "runs")
    receipt = json.loads((res.run_dir / "weights.json").read_text())["receipts"][0]
    assert {r["tensor"] for r in receipt["reinitialized"]} == {"fc.weight", "fc.bias"}
    assert receipt["head"] == "classifier fc 1000 -> 2 classes" and "timm" in receipt["how"]
    assert "model.weights:" in capsys.readouterr().out


def test_timm_torch_state_dict_with_other_input_channels_is_adapted(tmp_path):
    from clfkit.train.build import build_model

    path = _timm_1000(tmp_path, ".pth")
    sd = torch.load(path, weights_only=True)
    recipe = validate_recipe(
        folder_recipe(tmp_path, "T", model={"name": "timm", "arch": "resnet10t", "weights": str(path)})
    )
    model = build_model(recipe, 3, 1, (32, 32), [0.5], [0.5])
    receipt = model.net.weights_receipt
    assert [k for k, _ in receipt.adapted] == ["conv1.0.weight"] and "3 -> 1 input channels" in receipt.line()
    assert torch.equal(model.net.state_dict()["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"])
    assert model.net.conv1[0].weight.shape[1] == 1


def test_timm_weights_of_another_architecture_are_refused(tmp_path):
    timm = pytest.importorskip("timm")
    from clfkit.train.build import build_model
    from clfkit.errors import ModelFileError

    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), path)
    recipe = validate_recipe(
        folder_recipe(tmp_path, "T", model={"name": "timm", "arch": "resnet10t", "weights": str(path)})
    )
    with pytest.raises(ModelFileError, match=r"vit.pth matches only 0 of .* first mismatches: conv1"):
        build_model(recipe, 2, 3, (32, 32), [0.5] * 3, [0.5] * 3)


def test_accumulate_2_of_32_equals_one_batch_of_64(tmp_path):
    """Gradient accumulation: a model without BatchNorm, no augmentation, SGD with momentum and
    a cosine schedule (which counts optimizer steps): the weights after one epoch agree."""
    from conftest import tiny_recipe

    def weights(batch, accumulate, name):
        recipe = tiny_recipe(
            name=name,
            data__source__train_size=512,
            model={"name": "mlp", "hidden": [32]},
            optim={"name": "sgd", "lr": 0.1},
            schedule={"name": "cosine"},
            train={"epochs": 1, "batch_size": batch, "accumulate": accumulate, "deterministic": True},
        )
        res = train(recipe, tmp_path, quiet=True)
        ck = torch.load(res.run_dir / "last.pt", weights_only=True)
        return ck["model"], ck["step"]

    big, big_steps = weights(64, 1, "big")
    small, small_steps = weights(32, 2, "acc")
    assert big_steps == small_steps == 512 // 64
    for k in big:
        torch.testing.assert_close(small[k], big[k], rtol=1e-5, atol=1e-6)


def test_frozen_backbone_keeps_every_backbone_tensor_and_bn_statistic(run_a, tmp_path):
    root = write_image_folder(tmp_path / "two", classes=("ants", "bees"), per_class=8)
    recipe = folder_recipe(
        root, "B", init=str(run_a), train={"epochs": 2, "batch_size": 8, "freeze": "backbone"}
    )
    res = train(validate_recipe(recipe), tmp_path / "runs", quiet=True)
    start = torch.load(run_a / "best.pt", weights_only=True)["model"]
    end = torch.load(res.run_dir / "last.pt", weights_only=True)["model"]
    head = {
        r["tensor"]
        for r in json.loads((res.run_dir / "weights.json").read_text())["receipts"][0]["reinitialized"]
    }
    backbone = [k for k in end if k not in head and k not in ("mean", "std")]
    assert any("running_mean" in k for k in backbone) and len(backbone) > 4
    for k in backbone:
        assert torch.equal(start[k], end[k]), k
    assert head == {"net.head.weight", "net.head.bias"} or len(head) == 2, head  # the head alone trained


def test_resume_across_the_unfreeze_epoch_matches_an_uninterrupted_run(tmp_path):
    from conftest import extend_and_resume, tiny_recipe

    def recipe(epochs):
        return tiny_recipe(
            train__epochs=epochs,
            train__deterministic=True,
            train__freeze="backbone",
            train__unfreeze_epoch=2,
            data__source__train_size=128,
            data__image_size=8,
        )

    ref = train(recipe(3), tmp_path / "ref", quiet=True)
    cut = train(recipe(1), tmp_path / "cut", quiet=True)  # epoch 1 frozen; then resume for 3 epochs
    ck = torch.load(cut.run_dir / "last.pt", weights_only=True)  # after the frozen epoch
    res = extend_and_resume(cut.run_dir, 3)
    a = torch.load(ref.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(res.run_dir / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    first_conv = next(k for k in a if k.endswith("weight") and a[k].ndim == 4)
    assert not torch.equal(ck["model"][first_conv], a[first_conv])  # the backbone trained after unfreezing


def test_top5_in_summary_and_per_class_csv_and_predict_topk(tmp_path, monkeypatch):
    from conftest import tiny_recipe

    monkeypatch.chdir(tmp_path)
    recipe = tiny_recipe(data__source__num_classes=7, data__source__train_size=140, train__epochs=1)
    res = train(recipe, "runs", quiet=True)
    assert 0 <= res.summary["test_top5_acc"] <= 1 and res.summary["test_top5_acc"] >= res.summary["test_acc"]
    header = (res.run_dir / "per_class.csv").read_text().splitlines()[0]
    assert "top5_accuracy" in header.split(",")
    assert "val_top5_acc" in json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    run = CliRunner().invoke(cli, ["export", str(res.run_dir)])
    assert run.exit_code == 0, run.output
    import numpy as np
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(imgs / f"x{i}.png")
    onnx = next((tmp_path / "exported").glob("*.onnx"))
    run = CliRunner().invoke(cli, ["predict", str(onnx), str(imgs), "--topk", "3"])
    assert run.exit_code == 0, run.output
    lines = (tmp_path / "test.txt").read_text().splitlines()
    assert len(lines) == 3 and all(len(l.split("\t")) == 4 for l in lines)  # --topk lines are tab-separated
    run = CliRunner().invoke(
        cli, ["predict", str(onnx), str(imgs), "--topk", "3", "--format", "csv", "-o", "p.csv"]
    )
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "path,class_1,prob_1,class_2,prob_2,class_3,prob_3"
    probs = [float(v) for v in rows[1].split(",")[2::2]]
    assert probs == sorted(probs, reverse=True)
