"""Insight a user can look at: calibration (ECE, reliability diagram, export --calibrate) and
Grad-CAM maps in report.html and ``clfkit eval``, through the CLI."""

from __future__ import annotations

import json
import platform
import sys
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import invoke, refused, tiny_recipe_file


@pytest.fixture(autouse=True)
def gradcam_on(monkeypatch):
    """The maps are this file's subject: on here (conftest turns them off for the suite)."""
    monkeypatch.setenv("CLFKIT_GRADCAM", "1")


def test_gradcam_off_says_so_on_the_page(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFKIT_GRADCAM", "0")
    recipe = tiny_recipe_file(
        tmp_path,
        name="off",
        train__epochs=1,
        data__source__train_size=32,
        data__source__val_size=16,
        data__source__test_size=16,
    )
    assert invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")[0] == 0
    cam = json.loads((tmp_path / "runs" / "off" / "cam.json").read_text())
    assert cam["target_layer"] is None and not cam["mistakes"] and "CLFKIT_GRADCAM=0" in cam["note"]
    assert "CLFKIT_GRADCAM=0" in (tmp_path / "runs" / "off" / "report.html").read_text()


@pytest.fixture(scope="module")
def overconfident_run(tmp_path_factory) -> Path:
    """A tiny CNN trained 12 epochs on 64 images, without norm: it fits them and its val
    probabilities run far ahead of its val accuracy (measured: ECE 0.15, T 8)."""
    folder = tmp_path_factory.mktemp("over")
    recipe = tiny_recipe_file(
        folder,
        name="over",
        data__source__train_size=64,
        data__source__val_size=96,
        data__source__test_size=32,
        train__epochs=12,
        model__norm="none",
    )
    code, out = invoke("train", recipe, "--out", folder / "runs", "--quiet")
    assert code == 0, out
    return folder / "runs" / "over"


def _meta(path: Path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_every_run_reports_ece_and_a_reliability_diagram(overconfident_run):
    summary = json.loads((overconfident_run / "summary.json").read_text())
    cal = json.loads((overconfident_run / "calibration.json").read_text())
    assert set(cal["splits"]) == {"val", "test"} and "15 equal-width bins" in cal["binning"]
    for split in ("val", "test"):
        r = cal["splits"][split]
        assert summary[f"{split}_ece"] == pytest.approx(r["ece"])
        assert sum(b["count"] for b in r["bins"]) == r["images"]
        # ECE: the image-weighted gap between accuracy and confidence, bin by bin
        gap = (
            sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in r["bins"] if b["count"])
            / r["images"]
        )
        assert r["ece"] == pytest.approx(gap)
    assert cal["splits"]["val"]["mean_confidence"] > cal["splits"]["val"]["accuracy"]  # overconfident
    page = (overconfident_run / "report.html").read_text()
    assert 'id="calibration"' in page and "ECE" in page and 'alt="reliability.png"' in page


def test_export_calibrate_lowers_ece_keeps_top1_and_predict_uses_it(overconfident_run, tmp_path):
    from clfkit.deploy.predictor import Predictor

    plain, scaled = tmp_path / "plain.onnx", tmp_path / "scaled.onnx"
    assert invoke("export", overconfident_run, "-o", plain)[0] == 0
    code, out = invoke("export", overconfident_run, "-o", scaled, "--calibrate")
    assert code == 0 and "calibrated: temperature" in out and "top-1 agreement 100.00%" in out, out
    cal = json.loads(_meta(scaled)["clfkit.calibration"])
    assert cal["temperature"] > 1.5 and cal["split"] == "val"
    assert cal["ece_after"] < cal["ece_before"] and cal["nll_after"] < cal["nll_before"]
    summary = json.loads((overconfident_run / "summary.json").read_text())
    assert cal["ece_before"] == pytest.approx(
        summary["val_ece"], abs=1e-6
    )  # the same best.pt on the same val
    assert "clfkit.calibration" not in _meta(plain)
    images = list(np.load(overconfident_run / "samples.npy").transpose(0, 2, 3, 1))
    before, after = Predictor(plain).predict(images), Predictor(scaled).predict(images)
    assert [p.label for p in before] == [p.label for p in after]  # top-1 unchanged
    assert np.mean([p.prob for p in after]) < np.mean([p.prob for p in before])  # less sure


def test_calibrate_needs_a_val_split(tmp_path):
    recipe = tiny_recipe_file(
        tmp_path,
        name="noval",
        train__epochs=1,
        data__val_fraction=0,
        data__source__val_size=0,
        data__source__train_size=64,
        data__source__test_size=16,
    )
    assert invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")[0] == 0
    refused(
        ["--calibrate", "val split"],
        "export",
        tmp_path / "runs" / "noval",
        "-o",
        tmp_path / "x.onnx",
        "--calibrate",
    )
    assert not (tmp_path / "x.onnx").exists()


def test_gradcam_maps_in_report_and_eval(overconfident_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(overconfident_run, run)
    code, out = invoke("eval", run, "--split", "val")
    assert code == 0 and "cam.json" in out and "calibration.json" in out, out
    assert "calibration: ECE val 0." in out and "Grad-CAM on 0 (Sequential" in out, out
    cam = json.loads((run / "cam.json").read_text())
    assert cam["split"] == "val" and cam["target_layer"].startswith(
        "0 (Sequential"
    )  # the cnn's conv features
    assert cam["mistakes"] and cam["correct"]
    m = cam["mistakes"][0]
    assert m["true"] != m["predicted"] and {"png_base64", "cam_predicted", "cam_true"} <= set(m)
    assert [c["confidence"] for c in cam["mistakes"]] == sorted(
        (c["confidence"] for c in cam["mistakes"]), reverse=True
    )
    page = (run / "report.html").read_text()
    assert 'id="gradcam"' in page and m["cam_true"] in page and cam["correct"][0]["cam_predicted"] in page
    ev = json.loads((run / "eval_val.json").read_text())
    assert ev["val_ece"] is not None and ev["test_ece"] is not None


@pytest.mark.parametrize("model", [{"name": "mlp", "hidden": [16]}, {"name": "linear"}])
def test_a_model_without_feature_maps_is_said_so_not_an_error(tmp_path, model):
    recipe = tiny_recipe_file(
        tmp_path,
        name="flat",
        model=model,
        train__epochs=1,
        data__source__train_size=64,
        data__source__val_size=16,
        data__source__test_size=16,
    )
    assert invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")[0] == 0
    cam = json.loads((tmp_path / "runs" / "flat" / "cam.json").read_text())
    assert cam["target_layer"] is None and "no convolutional feature map" in cam["note"]
    assert "no convolutional feature map" in (tmp_path / "runs" / "flat" / "report.html").read_text()


def _resnet(stem: str):
    from clfkit.registry import create

    return create(
        "model",
        "resnet",
        num_classes=2,
        in_chans=3,
        image_size=(16, 16),
        layers=[1, 1, 1, 1],
        width=0.125,
        stem=stem,
    )


def test_resnet_and_plugin_named_layers(tmp_path):
    import torch

    from clfkit.train.build import ImageClassifier
    from clfkit.run.gradcam import target_layer

    class Plugin(torch.nn.Module):  # a plugin model naming its own layer
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Linear(4, 2)

        def cam_target_layer(self):
            return self.body

        def forward(self, x):
            return self.head(self.body(x).mean((2, 3)))

    x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    _layer, name = target_layer(ImageClassifier(Plugin(), [0.5] * 3, [0.2] * 3), x)
    assert name == "body (Conv2d, 16x16 map)"
    Plugin.cam_target_layer = lambda self: None  # "none of mine fits"
    assert target_layer(Plugin(), x)[0] is None
    recipe = tiny_recipe_file(
        tmp_path,
        name="res",
        model={"name": "resnet", "layers": [1, 1, 1, 1], "width": 0.125, "stem": "cifar"},
        train__epochs=1,
        data__source__train_size=64,
        data__source__val_size=16,
        data__source__test_size=16,
    )
    assert invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")[0] == 0
    assert (
        json.loads((tmp_path / "runs" / "res" / "cam.json").read_text())["target_layer"]
        == "stages.3 (Sequential, 2x2 map)"
    )
    # its last stage pooled to 1x1 (imagenet stem at 16 px): the deepest stage with a map instead
    _, name = target_layer(ImageClassifier(_resnet("imagenet"), [0.5] * 3, [0.2] * 3), x)
    assert name == "stages.1 (Sequential, 2x2 map)"


def test_gradcam_maps_are_capped_and_batched_and_the_page_says_so(overconfident_run, tmp_path, monkeypatch):
    """Many classes would mean thousands of maps: at most MAX_MAPS, CAM_BATCH images per pass."""
    from pytorch_grad_cam import GradCAM

    from clfkit.run import gradcam

    run = tmp_path / "copy"
    shutil.copytree(overconfident_run, run)
    batches = []
    real = GradCAM.__call__

    def call(self, input_tensor, targets=None, **kw):  # one pass of the maps: its batch size
        batches.append(len(input_tensor))
        return real(self, input_tensor, targets, **kw)

    monkeypatch.setattr(
        gradcam, "MAX_MAPS", 20
    )  # 8 mistakes take 16 maps: room for two classes' right answers
    monkeypatch.setattr(gradcam, "CAM_BATCH", 7)
    monkeypatch.setattr(GradCAM, "__call__", call)
    code, out = invoke("eval", run, "--split", "val")
    assert code == 0 and "right answers shown for the first 2 of 4 classes" in out, out
    cam = json.loads((run / "cam.json").read_text())
    names = json.loads((run / "eval_val.json").read_text())["class_names"]
    assert len(cam["mistakes"]) == 8 and 0 < len(cam["correct"]) <= 4 and cam["maps"] <= 20
    assert {c["true"] for c in cam["correct"]} <= set(names[:2])
    assert max(batches) == 7 and sum(batches) == cam["maps"] == 16 + len(cam["correct"])
    assert "first 2 of 4 classes" in (run / "report.html").read_text()


def test_calibrate_int8_and_flip_tta_compose_with_the_temperature_applied_once(overconfident_run, tmp_path):
    from clfkit.deploy.export.graph import run_onnx
    from clfkit.deploy.predictor import Predictor

    flip, scaled, int8 = tmp_path / "flip.onnx", tmp_path / "scaled.onnx", tmp_path / "int8.onnx"
    assert invoke("export", overconfident_run, "-o", flip, "--tta", "flip")[0] == 0
    assert invoke("export", overconfident_run, "-o", scaled, "--tta", "flip", "--calibrate")[0] == 0
    code, out = invoke(
        "export",
        overconfident_run,
        "-o",
        int8,
        "--tta",
        "flip",
        "--calibrate",
        "--int8",
        "--min-agreement",
        "50",
    )
    assert code == 0, out
    t = json.loads(_meta(scaled)["clfkit.calibration"])["temperature"]
    assert t > 2  # far enough from 1 that once and twice differ
    assert json.loads(_meta(int8)["clfkit.calibration"])["temperature"] == pytest.approx(t)
    images = np.load(overconfident_run / "samples.npy")
    logits = {p: run_onnx(p.read_bytes(), images) for p in (flip, scaled, int8)}
    np.testing.assert_allclose(logits[scaled], logits[flip] / t, rtol=1e-4, atol=1e-4)  # TTA logits / T, once
    ratio = np.abs(logits[int8]).mean() / np.abs(logits[flip]).mean()
    assert abs(ratio - 1 / t) < 0.3 / t  # int8 of the scaled graph: about 1/T of the plain scale, not 1/T**2
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("Div") == [n.op_type for n in onnx.load(str(flip)).graph.node].count("Div") + 1
    # predict reads the graph as it is: no second temperature on top
    probs = Predictor(scaled).predict(list(images.transpose(0, 2, 3, 1)))
    expected = np.exp(logits[scaled] - logits[scaled].max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert [p.prob for p in probs] == pytest.approx(list(expected.max(1)), abs=1e-4)


def test_rows_fill_batch_by_batch_and_refuse_more_than_they_hold():
    """clfkit.util.rows.Rows: what split_logits and the mistakes collect per image (not lists)."""
    from clfkit.util.rows import Rows

    rows = Rows(5)
    rows.put(torch.arange(6.0).view(3, 2))
    rows.put(torch.full((2, 2), 7.0))
    assert torch.equal(rows.result(), torch.tensor([[0.0, 1], [2, 3], [4, 5], [7, 7], [7, 7]]))
    with pytest.raises(ValueError, match="6 rows put into a buffer of 5"):
        rows.put(torch.zeros(1, 2))
    assert Rows(3).result((0, 4)).shape == (0, 4)
    part = Rows(4)
    part.put(torch.ones(1, 3, dtype=torch.long))
    assert part.result().dtype == torch.long and part.result().shape == (1, 3)


def test_heap_release_finds_glibc_malloc_trim_on_linux():
    from clfkit.util import heap

    heap.release_free_memory()  # never raises, whatever the C library
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert heap._malloc_trim() is not None
