"""Readers for the classic dataset files, from a local path only (nothing is downloaded):

- CIFAR-10 / CIFAR-100 "python version" batches (``cifar-10-batches-py``, ``cifar-100-python``)
- MNIST / Fashion-MNIST IDX files, plain or ``.gz``
- a CSV of ``path,label`` rows, paths relative to the CSV file

Every reader returns uint8 arrays shaped (N, C, H, W) plus int64 labels; :func:`fit_images`
then brings them to the recipe's size and channel count with exactly the resize and colour
conversion that :mod:`clfkit.data.image_files` applies to image files (so predict on an exported PNG
sees what training saw).

Why not torchvision's ``CIFAR10`` / ``MNIST`` classes: with ``download=False`` they still
insist on the md5 of the official archives and on torchvision's own folder names, and
``read_sn3_pascalvincent_tensor`` reads only uncompressed files and checks them with
``assert``. The formats are small enough to read here with clear errors.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
from pathlib import Path
import numpy as np
import torch
from PIL import Image

from clfkit.data import image_files
from clfkit.errors import DataError

CIFAR10_LAYOUT = (
    "cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and batches.meta "
    "(the 'CIFAR-10 python version' archive, extracted)"
)
CIFAR100_LAYOUT = (
    "cifar-100-python/ with train, test and meta (the 'CIFAR-100 python version' archive, extracted)"
)
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_LAYOUT = (
    "a folder holding "
    + ", ".join(MNIST_FILES.values())
    + " (each plain or .gz; torchvision's <root>/MNIST/raw/ layout works too)"
)
CSV_LAYOUT = (
    "a CSV file with one 'path,label' row per image (an optional 'path,label' header), "
    "paths relative to the CSV file"
)


# --------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; load them without letting a file run arbitrary code: only
    the numpy array reconstruction that the real batches use is allowed."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of the CIFAR format")


def _unpickle(path: Path, layout: str) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR file {path}; expected {layout}")
    try:
        with open(path, "rb") as f:
            # the official batches were written by Python 2: latin1 turns their str keys into str
            raw = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise DataError(
            f"{path} is not a CIFAR python batch ({type(e).__name__}: {e}); expected {layout}"
        ) from None
    if not isinstance(raw, dict):
        raise DataError(f"{path} holds a {type(raw).__name__}, not a CIFAR batch dict; expected {layout}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _cifar_images(batch: dict, path: Path, layout: str) -> np.ndarray:
    data = batch.get("data")
    if data is None:
        raise DataError(f"{path} has no 'data' entry; expected {layout}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072) "
            f"rows of 1024 red, 1024 green, 1024 blue values"
        )
    return data.reshape(-1, 3, 32, 32)


def _names(meta: dict, key: str) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _cifar_root(root: str | os.PathLike, folder: str, marker: str) -> Path:
    """Accept the extracted folder itself or its parent."""
    root = Path(root).expanduser()
    if (root / marker).exists() or not (root / folder).is_dir():
        return root
    return root / folder


def read_cifar10(root: str | os.PathLike) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """{"train": (x, y), "test": (x, y)} with x uint8 (N, 3, 32, 32), and the class names."""
    base = _cifar_root(root, "cifar-10-batches-py", "batches.meta")
    if not base.is_dir():
        raise DataError(f"CIFAR-10 root {base} does not exist; expected {CIFAR10_LAYOUT}")
    meta = _unpickle(base / "batches.meta", CIFAR10_LAYOUT)
    if "label_names" not in meta:
        raise DataError(f"{base / 'batches.meta'} has no label_names; expected {CIFAR10_LAYOUT}")
    out = {}
    for split, files in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        xs, ys = [], []
        for name in files:
            batch = _unpickle(base / name, CIFAR10_LAYOUT)
            xs.append(_cifar_images(batch, base / name, CIFAR10_LAYOUT))
            ys.append(_labels(batch, "labels", base / name, len(xs[-1]), CIFAR10_LAYOUT))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out, _names(meta, "label_names")


def read_cifar100(
    root: str | os.PathLike, labels: str = "fine"
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Like :func:`read_cifar10`; ``labels`` picks the 100 fine or the 20 coarse classes."""
    base = _cifar_root(root, "cifar-100-python", "meta")
    if not base.is_dir():
        raise DataError(f"CIFAR-100 root {base} does not exist; expected {CIFAR100_LAYOUT}")
    meta = _unpickle(base / "meta", CIFAR100_LAYOUT)
    key = f"{labels}_label_names"
    if key not in meta:
        raise DataError(f"{base / 'meta'} has no {key}; expected {CIFAR100_LAYOUT}")
    out = {}
    for split in ("train", "test"):
        batch = _unpickle(base / split, CIFAR100_LAYOUT)
        x = _cifar_images(batch, base / split, CIFAR100_LAYOUT)
        out[split] = (x, _labels(batch, f"{labels}_labels", base / split, len(x), CIFAR100_LAYOUT))
    return out, _names(meta, key)


def _labels(batch: dict, key: str, path: Path, n: int, layout: str) -> np.ndarray:
    if key not in batch:
        raise DataError(f"{path} has no {key!r} entry; expected {layout}")
    y = np.asarray(batch[key], dtype=np.int64)
    if y.shape != (n,):
        raise DataError(f"{path}: {n} images but {y.shape[0] if y.ndim else 0} labels")
    return y


# --------------------------------------------------------------------------- IDX (MNIST)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (plain or gzip-compressed, detected by content) as a numpy array."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or not 1 <= data[3] <= 4:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}; "
            f"expected 0x0000 + type byte + number of dimensions)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path}: the header says shape {shape} ({expected} bytes of data) but the "
            f"file holds {len(data) - header} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).copy()  # writable


def _find_idx(root: Path, stem: str, subdir: str) -> Path:
    for folder in (root, root / subdir / "raw", root / "raw"):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if (folder / name).is_file():
                return folder / name
    raise DataError(f"missing {stem}[.gz] under {root}; expected {MNIST_LAYOUT}")


def read_mnist(root: str | os.PathLike, subdir: str = "MNIST") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (x, y), "test": (x, y)} with x uint8 (N, 1, 28, 28) from MNIST-format IDX files.
    ``subdir`` is torchvision's folder name (MNIST, FashionMNIST) for its raw/ layout."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; expected {MNIST_LAYOUT}")
    out = {}
    for split in ("train", "test"):
        ipath = _find_idx(root, MNIST_FILES[f"{split}_images"], subdir)
        lpath = _find_idx(root, MNIST_FILES[f"{split}_labels"], subdir)
        x, y = read_idx(ipath), read_idx(lpath)
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataError(f"{ipath}: expected uint8 images (N, H, W), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{lpath}: expected {len(x)} labels (one per image in {ipath.name}), got shape {y.shape}"
            )
        out[split] = (x[:, None], y.astype(np.int64))
    return out


# --------------------------------------------------------------------------- CSV
def read_csv_index(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """(absolute image path, label string) per row of a ``path,label`` CSV."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist; expected {CSV_LAYOUT}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text ({e}); expected {CSV_LAYOUT}") from None
    rows = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if lineno == 1 and [c.strip().lower() for c in row] == ["path", "label"]:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{path}, line {lineno}: expected two fields 'path,label', got {row!r}")
        rows.append((path.parent / row[0].strip(), row[1].strip()))
    if not rows:
        raise DataError(f"{path} lists no images; expected {CSV_LAYOUT}")
    return rows


def label_order(labels: list[str]) -> list[str]:
    """Class names in a stable order: numerically when every label is an integer, else sorted."""
    unique = set(labels)
    if all(l.lstrip("-").isdigit() for l in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# --------------------------------------------------------------------------- size & channels
def fit_images(x: np.ndarray, size: tuple[int, int], channels: int, method: str) -> torch.Tensor:
    """uint8 (N, C, H, W) array -> uint8 tensor at ``size`` with ``channels``, through
    :func:`clfkit.data.image_files.decode_image`, the conversion and resize that image files get."""
    n, c, h, w = x.shape
    if (h, w) == tuple(size) and c == channels:
        return torch.from_numpy(np.ascontiguousarray(x))
    out = np.empty((n, size[0], size[1], channels), dtype=np.uint8)
    hwc = x.transpose(0, 2, 3, 1)
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(hwc[i, :, :, 0] if c == 1 else hwc[i]))  # L or RGB
        out[i] = image_files.decode_image(img, size, channels, method)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
