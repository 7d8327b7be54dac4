"""Dataset parsers on tiny files written in the real formats: CIFAR python pickles (as the
official archives hold them), MNIST IDX (plain and gzip), and a path,label CSV."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clfkit.data import image_files
from clfkit import registry
from clfkit.train.build import peek_data
from clfkit.data.parsers import read_idx
from clfkit.errors import DataError
from clfkit.recipe import validate_recipe


def dataset(name, size=(32, 32), channels=None, **args):
    return registry.create(
        "dataset", name, image_size=size, channels=channels, resize="squash", seed=0, on_error="skip", **args
    )


# --------------------------------------------------------------------------- CIFAR
def _cifar_rows(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the archives are Python 2 pickles (protocol 2)


def write_cifar10(root: Path, per_batch=2) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(base / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    for i in range(1, 6):
        _dump(
            base / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [i, 9 - i][:per_batch],
                "data": _cifar_rows(per_batch, i),
                "filenames": ["a.png"] * per_batch,
            },
        )
    # bytes keys, as Python 3 code that re-saves batches writes them
    _dump(base / "test_batch", {b"labels": [3, 4, 5], b"data": _cifar_rows(3, 9)})
    return base


def test_cifar10_reads_channel_planes_in_order(tmp_path):
    base = write_cifar10(tmp_path)
    s = dataset("cifar10", root=str(tmp_path))  # the parent of cifar-10-batches-py works too
    assert s.class_names[3] == "cat" and len(s.class_names) == 10
    assert s.train.images.shape == (10, 3, 32, 32) and s.train.images.dtype == torch.uint8
    assert s.train.labels.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    assert s.test.labels.tolist() == [3, 4, 5] and s.val is None
    row = _cifar_rows(2, 1)[0]
    # 1024 red values row-major, then green, then blue
    assert s.train.images[0, 0, 0, 1] == row[1] and s.train.images[0, 1, 0, 0] == row[1024]
    assert s.train.images[0, 2, 31, 31] == row[3071]
    again = dataset("cifar10", root=str(base))
    assert torch.equal(again.train.images, s.train.images)


def test_cifar_resize_and_gray_match_images(tmp_path):
    write_cifar10(tmp_path)
    s = dataset("cifar10", size=(16, 16), channels=1, root=str(tmp_path))
    assert s.train.images.shape == (10, 1, 16, 16)
    first = s.train.images[0]
    rgb = _cifar_rows(2, 1)[0].reshape(3, 32, 32).transpose(1, 2, 0)
    img = image_files.resize(image_files.to_mode(Image.fromarray(rgb), 1), (16, 16), "squash")
    assert np.array_equal(first[0].numpy(), np.asarray(img))


def test_cifar100_fine_and_coarse(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    _dump(
        base / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    for split, n in (("train", 4), ("test", 2)):
        _dump(
            base / split,
            {
                "data": _cifar_rows(n, n),
                "fine_labels": list(range(90, 90 + n)),
                "coarse_labels": list(range(n)),
                "filenames": ["x"] * n,
            },
        )
    fine = dataset("cifar100", root=str(base))
    assert fine.num_classes == 100 and fine.train.labels.tolist() == [90, 91, 92, 93]
    coarse = dataset("cifar100", root=str(tmp_path), labels="coarse")
    assert coarse.class_names[:2] == ["c0", "c1"] and coarse.test.labels.tolist() == [0, 1]


def test_cifar_errors_name_path_and_layout(tmp_path):
    base = write_cifar10(tmp_path)
    (base / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3.*data_batch_1 \.\.\. data_batch_5"):
        dataset("cifar10", root=str(base))
    (base / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR python batch"):
        dataset("cifar10", root=str(base))
    with pytest.raises(DataError, match="does not exist"):
        dataset("cifar10", root=str(tmp_path / "nowhere"))


def test_cifar_pickle_cannot_run_code(tmp_path):
    base = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    _dump(base / "data_batch_1", {"data": Evil(), "labels": []})
    with pytest.raises(DataError, match="refusing"):
        dataset("cifar10", root=str(base))
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- IDX
def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    return (
        struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    )


def write_mnist(root: Path, gz: bool, n_train=5, n_test=3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7][:n_test], dtype=np.uint8),
    }
    for name, arr in files.items():
        data = idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_plain_and_gz(tmp_path, gz):
    files = write_mnist(tmp_path / "mnist", gz)
    s = dataset("mnist", size=(28, 28), root=str(tmp_path / "mnist"))
    assert s.train.images.shape == (5, 1, 28, 28) and s.class_names == [str(i) for i in range(10)]
    assert np.array_equal(s.train.images[:, 0].numpy(), files["train-images-idx3-ubyte"])
    assert s.train.labels.tolist() == [0, 1, 2, 3, 4] and s.test.labels.tolist() == [9, 8, 7]


def test_fashion_mnist_torchvision_layout_rgb_and_resized(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    s = dataset("fashion_mnist", size=(32, 32), channels=3, root=str(tmp_path))
    assert s.class_names[9] == "ankle boot"
    assert s.train.images.shape == (5, 3, 32, 32)
    assert torch.equal(s.train.images[:, 0], s.train.images[:, 2])  # gray replicated to RGB


def test_idx_errors(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)
    write_mnist(tmp_path / "m", gz=False)
    (tmp_path / "m" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[\.gz\].*expected a folder holding"):
        dataset("mnist", size=(28, 28), root=str(tmp_path / "m"))


# --------------------------------------------------------------------------- CSV
def test_csv_index_relative_paths_labels_and_skips(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, v in enumerate((10, 200, 30, 220)):
        Image.fromarray(np.full((12, 10), v, np.uint8)).save(img_dir / f"{i}.png")
    (img_dir / "broken.png").write_bytes(b"nope")
    (tmp_path / "train.csv").write_text(
        "path,label\nimgs/0.png,cat\nimgs/1.png,dog\nimgs/2.png,cat\nimgs/broken.png,dog\n"
    )
    (tmp_path / "test.csv").write_text("imgs/3.png,dog\n")
    s = dataset("csv", size=(8, 8), train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"))
    assert s.class_names == ["cat", "dog"] and s.train.labels.tolist() == [0, 1, 0]
    assert s.train.images.shape == (3, 1, 8, 8)  # all grayscale: one channel
    assert int(s.train.images[1].float().mean()) == 200 and s.test.labels.tolist() == [1]
    assert len(s.skipped) == 1 and "broken.png" in s.skipped[0][0]
    (tmp_path / "val.csv").write_text("imgs/3.png,bird\n")
    with pytest.raises(DataError, match="bird"):
        dataset("csv", size=(8, 8), train=str(tmp_path / "train.csv"), val=str(tmp_path / "val.csv"))
    (tmp_path / "bad.csv").write_text("imgs/0.png\n")
    with pytest.raises(DataError, match="line 1: expected two fields"):
        dataset("csv", train=str(tmp_path / "bad.csv"))


def test_peek_needs_no_data(tmp_path):
    for source, expected in [
        ({"name": "cifar10", "root": "nowhere"}, (10, 3)),
        ({"name": "cifar100", "root": "nowhere", "labels": "coarse"}, (20, 3)),
        ({"name": "mnist", "root": "nowhere"}, (10, 1)),
        ({"name": "fashion_mnist", "root": "nowhere"}, (10, 1)),
    ]:
        r = validate_recipe({"name": "x", "model": "linear", "data": {"source": source}})
        assert peek_data(r) == expected
