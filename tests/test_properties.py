"""Property-based tests (hypothesis): recipe parsing and --set overrides either succeed or
raise RecipeError, never anything else; a resolved recipe round-trips; random bytes through
the image decoding path never crash (only DecodeError)."""

from __future__ import annotations

import copy
import io
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from clfkit.data import image_files
from clfkit.errors import RecipeError
from clfkit.recipe import apply_override, parse_override, read_yaml, validate_recipe

from conftest import TINY

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON/YAML-like values, nested
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "name",
    "seed",
    "data",
    "model",
    "optim",
    "loss",
    "schedule",
    "train",
    "regularizers",
    "data.image_size",
    "data.source",
    "data.val_fraction",
    "data.augment",
    "data.channels",
    "model.name",
    "model.blocks",
    "optim.lr",
    "optim.name",
    "train.epochs",
    "train.batch_size",
    "train.device",
    "train.precision",
    "train.checkpoint_every_steps",
    "train.on_nonfinite",
    "model.blocks.0.channels",
    "typo",
    "train.typo",
]


def _validate(data):
    """validate_recipe: a Recipe or RecipeError, nothing else."""
    try:
        return validate_recipe(data)
    except RecipeError as e:
        assert e.problems and all(isinstance(p, str) and isinstance(m, str) for p, m in e.problems)
        return None


@FAST
@given(path=st.sampled_from(FIELDS), value=values)
def test_any_value_at_any_field_is_accepted_or_a_recipe_error(path, value):
    data = copy.deepcopy(TINY)
    try:
        apply_override(data, path.split("."), value)
    except RecipeError:
        return
    _validate(data)


@FAST
@given(
    data=st.dictionaries(
        st.sampled_from(["name", "model", "train", "data", "optim", "junk"]), values, max_size=5
    )
)
def test_random_recipe_mappings_never_crash(data):
    _validate(data)


@FAST
@given(epochs=st.integers(-5, 200_000), bs=st.integers(-5, 70_000), lr=st.floats(1e-8, 10.0))
def test_numbers_in_range_are_kept_out_of_range_are_named(epochs, bs, lr):
    data = copy.deepcopy(TINY)
    for text in (f"train.epochs={epochs}", f"train.batch_size={bs}", f"optim.lr={lr!r}"):
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    ok = 1 <= epochs <= 100_000 and 1 <= bs <= 65_536
    try:
        r = validate_recipe(data)
    except RecipeError as e:
        assert not ok
        paths = {p for p, _ in e.problems}
        assert paths <= {"train.epochs", "train.batch_size"} and paths
        return
    assert ok and (r.train.epochs, r.train.batch_size, r.optim["lr"]) == (epochs, bs, lr)


@FAST
@given(text=st.text(max_size=40))
@example("=1")
@example("a..b=2")
@example("train.epochs")
@example("model.blocks.99.channels=3")
def test_set_parsing_never_crashes(text):
    data = copy.deepcopy(TINY)
    try:
        keys, value = parse_override(text)
        apply_override(data, keys, value)
    except RecipeError as e:
        assert "--set" in str(e) or e.problems
        return
    _validate(data)


@FAST
@given(
    key=st.sampled_from(["train.epochs", "optim.lr", "name", "train.device"]),
    raw=st.text(alphabet=string.printable, max_size=20),
)
def test_set_values_are_yaml_scalars_or_raw_text(key, raw):
    assume("\n" not in raw and "\r" not in raw)
    keys, value = parse_override(f"{key}={raw}")
    assert keys == key.split(".")
    _validate(apply_override(data := copy.deepcopy(TINY), keys, value) or data)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    epochs=st.integers(1, 50),
    lr=st.floats(1e-5, 1.0),
    norm=st.sampled_from(["batch", "group", "layer", "none"]),
)
def test_resolved_recipe_round_trips_through_yaml(seed, epochs, lr, norm):
    import yaml

    data = copy.deepcopy(TINY)
    data.update(seed=seed)
    data["train"]["epochs"] = epochs
    data["optim"]["lr"] = lr
    data["model"]["norm"] = norm
    r = validate_recipe(data)
    again = validate_recipe(yaml.safe_load(r.to_yaml()))  # what the run folder and checkpoints store
    assert again.to_dict() == r.to_dict()


@FAST
@given(text=st.text(max_size=200))
def test_any_recipe_text_reads_or_fails_cleanly(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        data = read_yaml(path)
    except RecipeError as e:
        msg = str(e)
        assert "YAML syntax error" in msg or "mapping" in msg
        if "YAML syntax error at line" in msg:
            assert "column" in msg
        return
    assert isinstance(data, dict)
    _validate(data)


# --------------------------------------------------------------------------- image decoding
def _valid_image_bytes(fmt: str) -> bytes:
    arr = np.random.default_rng(0).integers(0, 255, (24, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


SEEDS = {fmt: _valid_image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")}


def _decode_or_decode_error(path, size=(8, 8), channels=3):
    try:
        arr = image_files.decode(path, size, channels)
    except image_files.DecodeError as e:
        assert str(e)
        return None
    assert arr.shape == (*size, channels) and arr.dtype == np.uint8
    return arr


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about what it then rejects
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600), ext=st.sampled_from(image_files.IMAGE_EXTENSIONS))
def test_random_bytes_never_crash_the_decoder(tmp_path, data, ext):
    path = tmp_path / f"x{ext}"
    path.write_bytes(data)
    _decode_or_decode_error(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about what it then rejects
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(sorted(SEEDS)),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    channels=st.sampled_from([1, 3]),
)
def test_damaged_real_images_never_crash_the_decoder(tmp_path, fmt, cut, flips, channels):
    """Valid headers with damaged bodies reach deeper into the decoders than pure noise."""
    data = bytearray(SEEDS[fmt])
    for pos, byte in flips:
        data[pos % len(data)] = byte
    data = bytes(data[: max(1, cut % (len(data) + 1))])
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    _decode_or_decode_error(path, channels=channels)


def test_random_files_in_a_dataset_are_skipped_not_fatal(tmp_path):
    """The whole folder path (threads, on_error: skip) with garbage mixed in."""
    from conftest import write_image_folder
    from clfkit.data.class_folders import load_folder

    root = write_image_folder(tmp_path / "d", per_class=3, size=12)
    rng = np.random.default_rng(1)
    bad = 0
    for i, ext in enumerate(image_files.IMAGE_EXTENSIONS):
        data = SEEDS["PNG"][: rng.integers(1, 60)] if i % 2 else rng.bytes(int(rng.integers(0, 300)))
        (root / "train" / "cat" / f"junk{i}{ext}").write_bytes(data)
        bad += 1
    splits = load_folder(root, (8, 8), None, "squash", "skip")
    assert len(splits.train) == 6 and len(splits.skipped) == bad
