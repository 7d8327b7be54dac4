"""Data sources: image folders in any PIL mode, the built-in shapes, decoding rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clfkit.data import image_files
from clfkit.data import synthetic
from clfkit.data.class_folders import load_folder
from clfkit.errors import DataError

from conftest import write_image_folder


def test_folder_layout_labels_and_test_split(tmp_path):
    root = write_image_folder(tmp_path / "d")
    s = load_folder(root, (12, 12))
    assert s.class_names == ["cat", "dog"]
    assert s.train.images.shape == (12, 3, 12, 12) and s.train.images.dtype == torch.uint8
    assert s.train.labels.tolist() == [0] * 6 + [1] * 6
    assert s.val is None and s.test.labelled and len(s.test) == 4
    assert s.train.paths[0] == "cat/cat_0.png"


def test_every_pil_mode_is_converted(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
    Image.fromarray(rgb).save(root / "train/a/rgb.png")
    Image.fromarray(rgb).convert("L").save(root / "train/a/gray.png")
    Image.fromarray(rgb).convert("P").save(root / "train/a/pal.png")
    Image.fromarray(np.dstack([rgb, np.full((10, 14), 128, np.uint8)]), "RGBA").save(
        root / "train/b/rgba.png"
    )
    Image.fromarray(rgb).convert("CMYK").save(root / "train/b/cmyk.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(root / "train/b/sixteen.png")
    s = load_folder(root, (8, 8))
    assert s.train.images.shape == (6, 3, 8, 8) and not s.skipped


def test_grayscale_data_gets_one_channel(tmp_path):
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((9, 9), 40 * i, np.uint8), "L").save(root / "train" / c / f"{i}.png")
    assert load_folder(root, (8, 8)).train.images.shape == (4, 1, 8, 8)
    assert load_folder(root, (8, 8), channels=3).train.images.shape == (4, 3, 8, 8)


def test_colour_images_as_one_channel_match_predict(tmp_path):
    """channels: 1 on colour files trains on what predict feeds the model (PIL's luma), for
    folder and CSV data alike, not on one of the RGB channels."""
    from clfkit import registry

    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    files = []
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True)
        files.append(root / "train" / c / "x.png")
        Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(files[-1])
    expected = np.stack([image_files.decode(f, (8, 8), 1).transpose(2, 0, 1) for f in files])
    assert np.array_equal(load_folder(root, (8, 8), channels=1).train.images.numpy(), expected)
    (tmp_path / "train.csv").write_text("d/train/a/x.png,a\nd/train/b/x.png,b\n")
    s = registry.create(
        "dataset",
        "csv",
        image_size=(8, 8),
        channels=1,
        resize="squash",
        seed=0,
        on_error="skip",
        train=str(tmp_path / "train.csv"),
    )
    assert np.array_equal(s.train.images.numpy(), expected)


def test_corrupt_files_skipped_or_fail(tmp_path):
    root = write_image_folder(tmp_path / "d")
    (root / "train/cat/broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (root / "train/cat/empty.jpg").write_bytes(b"")
    s = load_folder(root, (8, 8))
    assert sorted(p for p, _ in s.skipped) == ["train/cat/broken.png", "train/cat/empty.jpg"]
    assert len(s.train) == 12
    with pytest.raises(DataError, match="broken.png|empty.jpg"):
        load_folder(root, (8, 8), on_error="fail")


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.mkdir(), "no train/ folder"),
        (lambda r: (r / "train" / "a").mkdir(parents=True), "holds no images"),
    ],
)
def test_bad_layouts(tmp_path, make, words):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(DataError, match=words):
        load_folder(root, (8, 8))


def test_train_val_class_mismatch(tmp_path):
    root = write_image_folder(tmp_path / "d")
    write_image_folder(tmp_path / "v", classes=("cat", "cow"))
    (tmp_path / "v" / "train").rename(root / "val")
    with pytest.raises(DataError, match="different class folders"):
        load_folder(root, (8, 8))


def test_resize_methods():
    img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    assert image_files.resize(img, (10, 10), "squash").size == (10, 10)
    assert image_files.resize(img, (10, 10), "crop").size == (10, 10)


def test_shapes_deterministic_and_balanced():
    a, ya = synthetic.generate(40, 16, 10, seed=3, split=0)
    b, yb = synthetic.generate(40, 16, 10, seed=3, split=0)
    c, _ = synthetic.generate(40, 16, 10, seed=4, split=0)
    assert np.array_equal(a, b) and np.array_equal(ya, yb) and not np.array_equal(a, c)
    assert np.bincount(ya).tolist() == [4] * 10


def test_real_photos_if_present():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
    if not root.is_dir():
        pytest.skip("../shared/data/hymenoptera not on this machine")
    s = load_folder(root, (32, 32), resize="crop")
    assert s.class_names == ["ants", "bees"] and len(s.train) >= 240
    # the GIF placeholder is palette mode, decoded like the rest, never a crash
    assert "ants/imageNotFound.gif" in s.train.paths or any("imageNotFound" in p for p, _ in s.skipped)


# ------------------------------------------------------------------ read_file: one open, any file
def test_read_file_reads_whole_files_and_names_what_it_cannot_read(tmp_path):
    """read_file opens once (non-blocking) and fstat-s: every kind of entry a folder can hold
    gets its reason, and a regular file of any size comes back whole."""
    import os
    import socket

    from clfkit.data.image_files import DecodeError, read_file

    big = os.urandom(3 * (1 << 20) + 7)  # more than one 1 MB chunk, odd length
    (tmp_path / "big.png").write_bytes(big)
    assert read_file(tmp_path / "big.png") == big
    assert read_file(str(tmp_path / "big.png")) == big
    (tmp_path / "one.png").write_bytes(b"x")
    assert read_file(tmp_path / "one.png") == b"x"

    cases = {
        "empty.png": "empty file (0 bytes)",
        "folder.png": "not a regular file: a folder",
        "pipe.png": "not a regular file: a named pipe (FIFO)",
        "sock.png": "not a regular file: a socket",
        "dangling.png": "symbolic link to nowhere.png, which does not exist",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")  # would block a plain open forever: no writer
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.png"))
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    try:
        for name, why in cases.items():
            with pytest.raises(DecodeError) as e:
                read_file(tmp_path / name)
            assert str(e.value) == why, name
    finally:
        server.close()
    if os.geteuid() != 0:
        (tmp_path / "locked.png").write_bytes(b"x")
        (tmp_path / "locked.png").chmod(0)
        with pytest.raises(DecodeError, match=r"cannot read the file \(Permission denied\)"):
            read_file(tmp_path / "locked.png")
