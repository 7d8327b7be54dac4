"""The one decode path, trusted (issue 22, classes 2 and 4): images of more than 8 bits map
to 0..255 by one fixed rule per mode, never by each image's own maximum, in training and
prediction alike; the Python Predictor reads a path, a PIL image and an array of one photo
the same way, never changes the caller's objects, and is safe to call with one object twice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, invoke
from PIL import Image, ImageOps

from clfkit import Predictor
from clfkit.data import image_files
from clfkit.errors import DataError
from clfkit.deploy.export import export_run

RNG = np.random.default_rng(3)
LEVELS = RNG.uniform(0.05, 0.95, (16, 16))  # an image's content, 0..1


@pytest.fixture(scope="module")
def onnx_file(trained_run, tmp_path_factory):
    return export_run(trained_run.run_dir, tmp_path_factory.mktemp("m") / "m.onnx").path


@pytest.fixture(scope="module")
def predictor(onnx_file):
    return Predictor(onnx_file, workers=4)


def _wide(mode: str, levels: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """A ``mode`` image holding ``levels`` (0..1, beyond for clipping) in the mode's documented
    range, and the uint8 pixels the rule says it decodes to."""
    if mode == "F":
        values, expected = levels.astype(np.float32), np.clip(levels, 0, 1) * 255
    else:
        values = np.clip(levels * 65535, 0, 65535 if mode != "I" else 2**31 - 1).round()
        expected = np.clip(values, 0, 65535) / 257
        values = values.astype({"I": np.int32, "I;16": np.uint16, "I;16B": ">u2"}[mode])
    img = Image.fromarray(values) if mode != "I" else Image.fromarray(values, "I")
    assert img.mode == mode, img.mode
    return img, np.rint(expected).astype(np.uint8)


def _logits(predictor, item) -> np.ndarray:
    return next(predictor.logits([item]))[0]


@pytest.mark.parametrize("mode", ["F", "I", "I;16", "I;16B"])
def test_each_wide_mode_decodes_by_its_fixed_range_in_predict(predictor, tmp_path, mode):
    for name, levels in [
        ("plain", LEVELS),
        ("darker", LEVELS / 4),
        ("hot", np.where(np.eye(16) > 0, 9.0, LEVELS)),
    ]:
        img, expected = _wide(mode, levels)
        path = tmp_path / f"{name}.tif"
        img.save(path)
        assert Image.open(path).mode == mode
        # the file decodes to the documented pixels: the same logits as those pixels given as an array
        np.testing.assert_allclose(_logits(predictor, path), _logits(predictor, expected), rtol=0, atol=1e-5)
    plain, darker = _wide(mode, LEVELS)[1], _wide(mode, LEVELS / 4)[1]
    assert abs(int(plain.mean()) - 4 * int(darker.mean())) <= 4  # a 4x darker copy stays 4x darker


def test_a_16_bit_png_decodes_as_its_16_bit_values(predictor, tmp_path):
    img, expected = _wide("I;16", LEVELS)
    img.save(tmp_path / "p.png")
    np.testing.assert_allclose(
        _logits(predictor, tmp_path / "p.png"), _logits(predictor, expected), atol=1e-5
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_float_image_is_refused_in_predict(predictor, onnx_file, tmp_path, bad):
    levels = LEVELS.copy()
    levels[3, 4] = bad
    (tmp_path / "images").mkdir()
    Image.fromarray(levels.astype(np.float32)).save(tmp_path / "images" / "bad.tif")
    with pytest.raises(DataError, match=r"bad.tif.*1 of its 256 pixel values are not finite"):
        predictor.predict(tmp_path / "images" / "bad.tif")
    Image.fromarray(LEVELS.astype(np.float32)).save(tmp_path / "images" / "good.tif")
    code, out = invoke("predict", onnx_file, tmp_path / "images", "-o", tmp_path / "out.txt")
    assert code == 0 and "bad.tif" in out and "not finite" in out, out
    assert (tmp_path / "out.txt").read_text().split()[0] == "good.tif"


@pytest.mark.parametrize("mode, values", [("F", LEVELS * 255), ("I", LEVELS * 2**31)])
def test_an_image_mostly_outside_its_modes_range_is_refused_not_decoded_flat(
    predictor, tmp_path, mode, values
):
    """A float image of 0..255 (or a 32-bit int one using its whole range) would clip nearly white."""
    img = (
        Image.fromarray(values.astype(np.float32))
        if mode == "F"
        else Image.fromarray(values.astype(np.int32), "I")
    )
    img.save(tmp_path / "x.tif")
    with pytest.raises(
        DataError, match=r"x.tif.*pixel values lie outside 0(\.0)?\.\.(1|65535).*docs/images.md"
    ):
        predictor.predict(tmp_path / "x.tif")


MODES = ("F", "I", "I;16", "I;16B")


def test_training_uses_the_same_rule_for_every_mode_and_lists_a_non_finite_image_in_skipped(tmp_path):
    root, expected = tmp_path / "data", {}
    for k, cls in enumerate(("dark", "light")):
        for split, n in (("train", 6), ("test", 4)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                mode = MODES[i % len(MODES)]
                img, pixels = _wide(mode, np.clip(LEVELS * 0.3 + 0.6 * k + 0.01 * i, 0, 1))
                img.save(root / split / cls / f"{i}.tif")
                expected[f"{cls}/{i}.tif"] = pixels
    nan = LEVELS.astype(np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan).save(root / "train" / "dark" / "nan.tif")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                **TINY,
                "data": {
                    "source": {"name": "folder", "root": str(root)},
                    "image_size": 16,
                    "val_fraction": 0.25,
                },
                "train": {"epochs": 1, "batch_size": 8},
            }
        )
    )
    code, out = invoke("train", recipe, "--out", tmp_path / "runs", "--quiet")
    assert code == 0, out
    run = next((tmp_path / "runs").iterdir())
    skipped = (run / "skipped.txt").read_text()
    assert "nan.tif" in skipped and "not finite" in skipped, skipped
    from clfkit.train.build import build_data
    from clfkit.recipe import validate_recipe

    test = build_data(validate_recipe(yaml.safe_load(recipe.read_text()))).test  # every mode in it
    assert test.images.shape[1] == 1 and len(test.paths) == 8  # grayscale: one channel
    for path, image in zip(test.paths, test.images.numpy()):
        name = "/".join(Path(path).parts[-2:])
        np.testing.assert_array_equal(image[0], expected[name], err_msg=name)
    assert json.loads((run / "summary.json").read_text())["class_names"] == ["dark", "light"]


# --------------------------------------------------------------------------- the Predictor's items
def _photo(path, size=(48, 32), orientation=None):
    """A JPEG with content that changes under rotation; EXIF ``orientation`` when given."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    arr = np.stack([x * 255 // size[0], y * 255 // size[1], (x * y) % 256], -1).astype(np.uint8)
    exif = Image.Exif()
    if orientation:
        exif[image_files.EXIF_ORIENTATION] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())
    return path


def test_predict_never_changes_the_callers_image_or_array(predictor, tmp_path):
    path = _photo(tmp_path / "big.jpg", size=(400, 300))
    img = Image.open(path)  # as a user opens it: lazily loaded, so PIL's draft could shrink it
    before = Image.open(path)
    predictor.predict(img)
    assert img.size == (400, 300) and img.mode == "RGB" and img.tobytes() == before.tobytes()
    arr = np.asarray(Image.open(path)).copy()
    kept = arr.copy()
    predictor.predict([arr, arr[:, :, 0]])
    predictor.predict(arr[None])
    assert np.array_equal(arr, kept)
    gray = Image.open(path).convert("I;16")
    gray_before = gray.tobytes()
    predictor.predict(gray)
    assert gray.mode == "I;16" and gray.tobytes() == gray_before


def test_the_same_image_object_many_times_in_one_call_gives_one_answer(predictor, tmp_path):
    path = _photo(tmp_path / "p.jpg", size=(200, 150), orientation=6)
    for _ in range(3):
        img = Image.open(path)  # not yet loaded: every worker would load it at once
        got = predictor.predict([img] * 24, topk=2)
        assert len({(tuple(p.classes), tuple(round(x, 6) for x in p.probs)) for p in got}) == 1
    single = predictor.predict(Image.open(path), topk=2)
    assert got[0].classes == single.classes and got[0].probs == pytest.approx(single.probs, abs=1e-6)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_path_pil_and_upright_array_of_one_exif_photo_agree(predictor, tmp_path, orientation):
    path = _photo(tmp_path / "r.jpg", orientation=orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    by_path, by_pil, by_array = (_logits(predictor, item) for item in (path, Image.open(path), upright))
    np.testing.assert_allclose(by_pil, by_path, atol=1e-5)
    np.testing.assert_allclose(by_array, by_path, atol=1e-5)  # an array: pixels already upright
    if orientation != 1:  # the stored (sideways) pixels as an array are another image
        assert not np.allclose(_logits(predictor, np.asarray(Image.open(path))), by_path, atol=1e-5)
    transposed = ImageOps.exif_transpose(Image.open(path))  # a user turned it already: not turned twice
    np.testing.assert_allclose(_logits(predictor, transposed), by_path, atol=1e-5)


def test_the_pixel_limit_applies_to_every_item_kind(predictor, tmp_path, monkeypatch):
    path = _photo(tmp_path / "p.jpg", size=(40, 30))
    monkeypatch.setattr(image_files, "MAX_PIXELS", 1000)
    for item in (path, Image.open(path), np.asarray(Image.open(path))):
        with pytest.raises(DataError, match="40x30 pixels is over the 1,000-pixel limit"):
            predictor.predict(item)
        with pytest.raises(DataError, match="item 0.*40x30 pixels is over"):
            list(predictor.logits([item]))


def test_predict_and_logits_read_arrays_alike(predictor):
    images = RNG.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    for call in (predictor.predict, lambda items: list(predictor.logits(items))):
        with pytest.raises(DataError, match=r"HxWxC with C in 1, 3, 4.*\(N, H, W, 1\)"):
            call(images)  # (N, H, W): refused alike, with the unambiguous form named
    one_by_one = np.concatenate([next(predictor.logits([im])) for im in images])
    np.testing.assert_allclose(next(predictor.logits(images[..., None])), one_by_one, atol=1e-5)
    batch = predictor.predict(images[..., None])
    assert [p.label for p in batch] == [predictor.class_names[i] for i in one_by_one.argmax(1)]
    single = predictor.predict(images[0])  # HxW: one image, in both
    assert single.label == batch[0].label and next(predictor.logits(images[0])).shape == (1, 4)
