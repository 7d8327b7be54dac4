"""The Python predictor: same decode path and results as `clfkit predict`, every item kind,
no torch (its README example runs with torch hidden)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clfkit.errors import DataError
from clfkit.deploy.export import export_run
from clfkit.deploy.batch_predict import predict_folder

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = str(Path(__file__).with_name("no_torch.py"))


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory):
    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("pr") / "m.onnx").path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(11):  # odd sizes: resized on the way in; not a multiple of the batch size
        arr = rng.integers(0, 256, (13 + i, 30 - i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{i:02d}.png")
    return d


def test_same_classes_and_probabilities_as_clfkit_predict(model, photos, tmp_path):
    from clfkit import Predictor

    out = predict_folder(model, photos, tmp_path / "p.csv", fmt="csv", batch_size=4).out
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    preds = Predictor(model, batch_size=4).predict(sorted(photos.glob("*.png")), topk=2)
    assert [p.label for p in preds] == [r[1] for r in rows]
    assert [f"{p.prob:.6f}" for p in preds] == [r[3] for r in rows]


def test_paths_pil_images_and_arrays_agree(model, photos):
    from clfkit import Predictor

    p = Predictor(model, batch_size=3)
    files = sorted(photos.glob("*.png"))
    pils = [Image.open(f) for f in files]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    by = [p.predict(items, topk=4) for items in (files, [str(f) for f in files], pils, arrays)]
    for other in by[1:]:
        assert [q.classes for q in other] == [q.classes for q in by[0]]
        np.testing.assert_allclose([q.probs for q in other], [q.probs for q in by[0]], rtol=0, atol=1e-7)


def test_topk_order_single_item_and_bad_items(model, photos):
    from clfkit import Prediction, Predictor

    p = Predictor(model)
    one = p.predict(photos / "00.png", topk=99)  # clamped to the number of classes
    assert isinstance(one, Prediction) and len(one.classes) == len(p.class_names)
    assert one.probs == sorted(one.probs, reverse=True) and abs(sum(one.probs) - 1) < 1e-6
    assert sorted(one.classes) == sorted(p.class_names) and one.indices[0] == p.class_names.index(one.label)
    assert p.predict(np.zeros((9, 9), np.uint8)).label in p.class_names  # a gray array
    with pytest.raises(DataError, match="uint8"):
        p.predict([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(DataError, match="cannot classify a dict"):
        p.predict([{}])
    assert p.predict([]) == []


def _readme_example() -> str:
    text = (ROOT / "docs" / "export-predict.md").read_text()
    m = re.search(r"<!-- example:predictor .*?-->\n```python\n(.*?)```", text, re.S)
    assert m, "docs/export-predict.md lost its Predictor example"
    return m.group(1)


def test_readme_example_runs_without_torch(model, photos, tmp_path):
    (tmp_path / "exported").mkdir()
    shutil.copy(model, tmp_path / "exported" / "flowers5.onnx")
    (tmp_path / "photos").mkdir()
    shutil.copy(photos / "00.png", tmp_path / "photos" / "tulip.png")
    Image.open(photos / "01.png").convert("RGB").save(tmp_path / "photos" / "rose.jpg")
    code = _readme_example() + "\nimport sys; assert 'torch' not in sys.modules\n"
    r = subprocess.run(
        [sys.executable, NO_TORCH, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and lines[3] in {*lines[4].strip("[]").replace("'", "").split(", ")}


def test_import_clfkit_stays_light():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import clfkit, sys; assert 'onnxruntime' not in sys.modules; "
            "from clfkit import Predictor; assert 'onnxruntime' not in sys.modules; clfkit.Nope",
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert "has no attribute 'Nope'" in r.stderr, r.stderr


def test_bad_arguments_and_containers_get_a_clear_data_error(model, photos, tmp_path):
    """Red team 19: arguments of the wrong type, things that only look like lists of items and
    empty images were TypeErrors, items of the wrong kind, or silent predictions of nothing."""
    import io

    from clfkit import Predictor

    for name, value in [
        ("batch_size", None),
        ("batch_size", "4"),
        ("batch_size", True),
        ("workers", -1),
        ("threads", 0),
    ]:
        with pytest.raises(DataError, match=f"{name} must be a whole number of at least 1, got {value!r}"):
            Predictor(model, **{name: value})
    p = Predictor(model, batch_size=2)
    for topk in (0, -3, None, 1.5):
        with pytest.raises(DataError, match="topk must be"):
            p.predict(photos / "00.png", topk=topk)
    png = io.BytesIO()
    Image.new("RGB", (9, 9)).save(png, "PNG")
    for items in (png.getvalue(), bytearray(png.getvalue()), io.BytesIO(png.getvalue())):
        with pytest.raises(DataError, match=r"cannot classify a \w+: .*PIL.Image.open\(io.BytesIO"):
            p.predict(items)
    for items in (None, 3, {"a": 1}):
        with pytest.raises(DataError, match=f"cannot classify a {type(items).__name__}: give a path"):
            p.predict(items)
    for arr in (np.zeros(9, np.uint8), np.array(3, np.uint8)):
        with pytest.raises(DataError, match=r"an array of items must be \(N, H, W, C\)"):
            p.predict(arr)
    for empty in (np.zeros((0, 9, 3), np.uint8), Image.new("RGB", (0, 5))):
        with pytest.raises(DataError, match=r"item 0: the image is empty \(\d+x\d+ pixels\)"):
            p.predict(empty)
    assert len(p.predict(np.zeros((3, 9, 9, 3), np.uint8))) == 3  # an (N, H, W, C) array is N items
    opaque_gray = Image.new("LA", (9, 9), (40, 255))  # premultiplied "La" raised "conversion not supported"
    assert p.predict(opaque_gray.convert("La")).probs == p.predict(opaque_gray).probs
    assert len(p.predict(x for x in [photos / "00.png"] * 3)) == 3  # a generator


def test_a_bad_item_is_named_by_its_number_and_path(model, photos, tmp_path):
    from clfkit import Predictor

    (tmp_path / "dir.png").mkdir()
    p = Predictor(model, batch_size=2)
    good = photos / "00.png"
    for bad, why in [(tmp_path / "dir.png", "a folder"), (tmp_path / "gone.png", "No such file")]:
        with pytest.raises(DataError, match=rf"^item 2 \({re.escape(str(bad))}\): .*{why}"):
            p.predict([good, good, bad])
    with pytest.raises(DataError, match=r"^item 1: an array item must be uint8"):
        p.predict([good, np.zeros((8, 8, 3), np.float32)])


def test_a_graph_with_clfkits_names_and_metadata_but_other_outputs_is_refused(model, photos, tmp_path):
    """Red team 19: a hand-made ONNX file with the input 'image' (uint8), the output 'logits'
    and clfkit's metadata, whose output is not (N, classes) floats, crashed with a TypeError in
    the Predictor; `clfkit predict` must refuse it and write nothing."""
    import onnx
    from onnx import TensorProto, helper

    from clfkit import Predictor
    from clfkit.errors import ModelFileError

    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.UINT8, [None, 3, 16, 16])],
    )
    fake = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fake.ir_version = 8
    for k, v in meta.items():
        fake.metadata_props.add(key=k, value=v)
    onnx.save(fake, tmp_path / "fake.onnx")
    p = Predictor(tmp_path / "fake.onnx")
    with pytest.raises(
        ModelFileError,
        match=r"output 'logits' is uint8 \(1, 3, 16, 16\) for 1 image\(s\), not float "
        r"logits \(1, 4\) .*clfkit export RUN_DIR",
    ):
        p.predict(photos / "00.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "clfkit",
            "predict",
            str(tmp_path / "fake.onnx"),
            str(photos),
            "-o",
            str(tmp_path / "p.csv"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2 and "not float logits" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "p.csv").exists()
