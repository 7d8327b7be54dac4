"""Export proves parity; predict writes one line per image and skips what is not one."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from clfkit.deploy import export as export_mod
from clfkit.errors import ExportError, ModelFileError
from clfkit.deploy.export import export_run
from clfkit.deploy.batch_predict import predict_folder
from clfkit.deploy.predictor import load_onnx


@pytest.fixture(scope="module")
def onnx_file(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    res = export_run(trained_run.run_dir, out)
    assert res.agreement == 1.0 and res.max_abs_diff <= 1e-3
    return out


def test_onnx_has_metadata_and_only_dynamic_batch(onnx_file):
    m = onnx.load(str(onnx_file))
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["clfkit.class_names"]) == ["circle", "square", "triangle", "ring"]
    assert json.loads(meta["clfkit.image_size"]) == [16, 16] and meta["clfkit.channels"] == "3"
    assert len(json.loads(meta["clfkit.mean"])) == 3 and "clfkit.recipe" in meta
    assert json.loads(meta["clfkit.parity"])["top1_agreement"] == 1.0
    (inp,), (out,) = m.graph.input, m.graph.output
    assert inp.name == "image" and out.name == "logits"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 16, 16]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_broken_export_is_refused_and_nothing_written(trained_run, tmp_path, monkeypatch):
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda b, x: real(b, x)[:, ::-1].copy())
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="does not match"):
        export_run(trained_run.run_dir, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_small_numeric_drift_above_tolerance_refused(trained_run, tmp_path, monkeypatch):
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda b, x: real(b, x) + 0.01)
    with pytest.raises(ExportError, match="max abs diff 1.00e-02"):
        export_run(trained_run.run_dir, tmp_path / "x.onnx")


def _mixed_folder(root):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8), "L").save(root / "a_gray.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(root / "b_rgba.png")
    Image.fromarray(rng.integers(0, 255, (40, 32, 3), dtype=np.uint8)).save(root / "sub" / "c.jpg")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("P").save(root / "d_pal.gif")
    (root / "notes.txt").write_text("not an image")
    (root / "e_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return root


def test_predict_writes_expected_lines(onnx_file, tmp_path):
    root = _mixed_folder(tmp_path / "imgs")
    out = tmp_path / "test.txt"
    res = predict_folder(onnx_file, root, out, batch_size=2)
    lines = out.read_text().splitlines()
    assert [l.split(" ")[0] for l in lines] == ["a_gray.png", "b_rgba.png", "d_pal.gif", "sub/c.jpg"]
    assert all(l.split(" ")[1] in {"circle", "square", "triangle", "ring"} for l in lines)
    assert res.written == 4
    assert sorted(p for p, _ in res.skipped) == ["e_corrupt.png", "notes.txt"]


def test_predict_index_format_matches_names(onnx_file, tmp_path):
    root = _mixed_folder(tmp_path / "imgs")
    predict_folder(onnx_file, root, tmp_path / "n.txt")
    predict_folder(onnx_file, root, tmp_path / "i.txt", fmt="index")
    names = ["circle", "square", "triangle", "ring"]
    by_name = [l.split(" ")[1] for l in (tmp_path / "n.txt").read_text().splitlines()]
    by_index = [names[int(l.split(" ")[1])] for l in (tmp_path / "i.txt").read_text().splitlines()]
    assert by_name == by_index


def test_predict_agrees_with_torch_on_training_images(trained_run, onnx_file, tmp_path):
    """The decode path of predict equals the data the model was trained on (lossless PNGs)."""
    import torch

    from clfkit.run.checkpoint import load_checkpoint, model_from_checkpoint

    samples = np.load(trained_run.run_dir / "samples.npy")[:8]
    root = tmp_path / "s"
    root.mkdir()
    for i, img in enumerate(samples):
        Image.fromarray(img.transpose(1, 2, 0)).save(root / f"{i:02d}.png")
    predict_folder(onnx_file, root, tmp_path / "t.txt", fmt="index")
    got = [int(l.split()[1]) for l in (tmp_path / "t.txt").read_text().splitlines()]
    model = model_from_checkpoint(load_checkpoint(trained_run.run_dir / "best.pt"))
    with torch.no_grad():
        want = model(torch.from_numpy(samples)).argmax(1).tolist()
    assert got == want


def test_predict_csv_has_confidences_and_same_classes(onnx_file, tmp_path):
    import csv

    root = _mixed_folder(tmp_path / "imgs")
    predict_folder(onnx_file, root, tmp_path / "n.txt")
    predict_folder(onnx_file, root, tmp_path / "p.csv", fmt="csv")
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    names = [l.split(" ") for l in (tmp_path / "n.txt").read_text().splitlines()]
    assert [(r["path"], r["class"]) for r in rows] == [tuple(n) for n in names]
    names_all = ["circle", "square", "triangle", "ring"]
    assert all(names_all[int(r["index"])] == r["class"] for r in rows)
    assert all(1 / 4 <= float(r["confidence"]) <= 1 for r in rows)  # top-1 softmax of 4 classes


def test_not_onnx_or_no_metadata(tmp_path, onnx_file):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        load_onnx(junk)
    m = onnx.load(str(onnx_file))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(ModelFileError, match="lacks clfkit metadata"):
        load_onnx(bare)
