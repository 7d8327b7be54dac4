"""Datasets. Contract: ``factory(image_size, channels, resize, seed, on_error, **args) ->
clfkit.data.Splits`` with uint8 (N, C, H, W) images at ``image_size``. ``channels`` is None
when the recipe says ``auto``: then the dataset decides (1 for grayscale data)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field
from typing_extensions import Annotated

from clfkit.data import ImageSet, Splits
from clfkit.errors import DataError
from clfkit.registry.plugins import register
from clfkit.util.safe_names import check_class_names, check_same_spelling


@register("dataset", "shapes")
def shapes(
    image_size: tuple[int, int],
    channels: int | None,
    seed: int,
    *,
    num_classes: Annotated[int, Field(ge=2, le=10)] = 10,
    train_size: Annotated[int, Field(ge=2)] = 10000,
    val_size: Annotated[int, Field(ge=0)] = 1000,
    test_size: Annotated[int, Field(ge=0)] = 2000,
) -> Splits:
    """Built-in procedural shapes and textures (10 classes), generated from the seed; no files."""
    from clfkit.data import synthetic
    from clfkit.data.parsers import fit_images

    if image_size[0] != image_size[1]:
        raise ValueError(f"shapes makes square images; got image_size {image_size}")

    def make(n, split):
        if n == 0:
            return None
        x, y = synthetic.generate(n, image_size[0], num_classes, seed, split)
        x = x.transpose(0, 3, 1, 2)
        # to gray exactly as predict converts an RGB file (PIL's luma), not by a channel mean
        x = fit_images(x, image_size, 1, "squash") if channels == 1 else torch.from_numpy(x).contiguous()
        return ImageSet(x, torch.from_numpy(y))

    return Splits(
        train=make(train_size, 0),
        val=make(val_size, 1),
        test=make(test_size, 2),
        class_names=list(synthetic.CLASSES[:num_classes]),
        description=f"built-in shapes, {num_classes} classes, seed {seed}",
    )


@register("dataset", "folder")
def folder(
    image_size: tuple[int, int], channels: int | None, resize: str, on_error: str, root: str
) -> Splits:
    """Image folders: root/train/<class>/*, optional root/val/<class>/*, optional root/test/."""
    from clfkit.data.class_folders import load_folder

    return load_folder(root, image_size, channels, resize, on_error)


# `clfkit recipe check` asks (num_classes, channels) without reading the data.
shapes.peek = lambda num_classes=10, **_: (num_classes, 3)


def _folder_peek(root: str, **_):
    from clfkit.data.class_folders import class_folders  # the training rule: links checked, loops refused

    train = Path(root).expanduser() / "train"
    return (len(class_folders(train)) if train.is_dir() else 0), 3


folder.peek = _folder_peek


# --------------------------------------------------------------------------- files on disk
FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]


def _arrays_to_splits(
    arrays: dict,
    class_names: list[str],
    native_channels: int,
    *,
    image_size: tuple[int, int],
    channels: Optional[int],
    resize: str,
    description: str,
) -> Splits:
    from clfkit.data.parsers import fit_images

    c = native_channels if channels is None else channels
    sets = {
        split: ImageSet(fit_images(x, image_size, c, resize), torch.from_numpy(y))
        for split, (x, y) in arrays.items()
    }
    for split, s in sets.items():
        bad = s.labels[(s.labels < 0) | (s.labels >= len(class_names))]
        if len(bad):
            raise DataError(
                f"{description}: {split} labels {sorted(set(bad.tolist()))[:5]} are outside "
                f"0..{len(class_names) - 1}"
            )
    return Splits(
        train=sets["train"], test=sets.get("test"), class_names=class_names, description=description
    )


@register("dataset", "cifar10")
def cifar10(image_size: tuple[int, int], channels: int | None, resize: str, root: str) -> Splits:
    """CIFAR-10 python batches: root is cifar-10-batches-py/ or the folder holding it."""
    from clfkit.data.parsers import read_cifar10

    arrays, names = read_cifar10(root)
    return _arrays_to_splits(
        arrays,
        names,
        3,
        image_size=image_size,
        channels=channels,
        resize=resize,
        description=f"CIFAR-10 from {root}",
    )


@register("dataset", "cifar100")
def cifar100(
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    root: str,
    labels: Literal["fine", "coarse"] = "fine",
) -> Splits:
    """CIFAR-100 python batches (cifar-100-python/); 100 fine or 20 coarse classes."""
    from clfkit.data.parsers import read_cifar100

    arrays, names = read_cifar100(root, labels)
    return _arrays_to_splits(
        arrays,
        names,
        3,
        image_size=image_size,
        channels=channels,
        resize=resize,
        description=f"CIFAR-100 ({labels} labels) from {root}",
    )


@register("dataset", "mnist")
def mnist(image_size: tuple[int, int], channels: int | None, resize: str, root: str) -> Splits:
    """MNIST digits from IDX files (plain or .gz) in root: train-images-idx3-ubyte, ..."""
    from clfkit.data.parsers import read_mnist

    return _arrays_to_splits(
        read_mnist(root, "MNIST"),
        [str(i) for i in range(10)],
        1,
        image_size=image_size,
        channels=channels,
        resize=resize,
        description=f"MNIST from {root}",
    )


@register("dataset", "fashion_mnist")
def fashion_mnist(image_size: tuple[int, int], channels: int | None, resize: str, root: str) -> Splits:
    """Fashion-MNIST from IDX files (same file names as MNIST, plain or .gz) in root."""
    from clfkit.data.parsers import read_mnist

    return _arrays_to_splits(
        read_mnist(root, "FashionMNIST"),
        FASHION_CLASSES,
        1,
        image_size=image_size,
        channels=channels,
        resize=resize,
        description=f"Fashion-MNIST from {root}",
    )


@register("dataset", "csv")
def csv_index(
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    on_error: str,
    *,
    train: str,
    val: Optional[str] = None,
    test: Optional[str] = None,
) -> Splits:
    """CSV files of 'path,label' rows (paths relative to the CSV); val and test are optional."""
    from clfkit.data.class_folders import auto_channels, decode_files, to_image_set
    from clfkit.data.parsers import label_order, read_csv_index

    indexes = {"train": read_csv_index(train)}
    for split, path in (("val", val), ("test", test)):
        if path:
            indexes[split] = read_csv_index(path)
    class_names = label_order([label for _, label in indexes["train"]])
    check_class_names(class_names, f"the train CSV {train}")
    if len(class_names) < 2:
        raise DataError(f"{train} must name at least two classes, found {class_names}")
    skipped: list[tuple[str, str]] = []
    decoded = {}
    for split, rows in indexes.items():
        check_same_spelling(
            class_names,
            sorted({label for _, label in rows}),
            f"the train CSV {train}",
            f"the {split} CSV {val if split == 'val' else test}",
        )
        unknown = sorted({label for _, label in rows} - set(class_names))
        if unknown:
            raise DataError(
                f"{split} CSV {val if split == 'val' else test} has labels the train CSV "
                f"{train} lacks: {unknown[:10]}"
            )
        decoded[split] = decode_files(
            [p for p, _ in rows], image_size, channels, resize=resize, on_error=on_error, skipped=skipped
        )
    gray = channels is None and auto_channels(decoded["train"]) == 1  # grayscale data needs no recipe change
    index = {name: i for i, name in enumerate(class_names)}
    sets = {
        split: to_image_set(decoded[split], [index[label] for _, label in rows], None, gray)
        for split, rows in indexes.items()
    }
    if sets["train"] is None:
        raise DataError(f"no readable training images listed in {train} ({len(skipped)} unreadable)")
    return Splits(
        train=sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        class_names=class_names,
        skipped=skipped,
        description=f"CSV index {train}",
    )


# `clfkit recipe check` asks (num_classes, channels) without reading the images.
cifar10.peek = lambda **_: (10, 3)
cifar100.peek = lambda labels="fine", **_: (100 if labels == "fine" else 20, 3)
mnist.peek = lambda **_: (10, 1)
fashion_mnist.peek = lambda **_: (10, 1)


def _csv_peek(train: str, **_):
    from clfkit.data.parsers import label_order, read_csv_index

    if not Path(train).expanduser().is_file():
        return 0, 3
    return len(label_order([label for _, label in read_csv_index(train)])), 3


csv_index.peek = _csv_peek


# --------------------------------------------------------------------------- the ecosystem's formats
@register("dataset", "hf")
def hf(
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    on_error: str,
    *,
    path: str,
    image: Optional[str] = None,
    label: Optional[str] = None,
    config: Optional[str] = None,
    train_split: Optional[str] = None,
    val_split: Optional[str] = None,
    test_split: Optional[str] = None,
) -> Splits:
    """A Hugging Face dataset, offline: a save_to_disk folder, parquet file(s), or a name in the
    local HF cache; image/label columns from the features (ClassLabel names) or as named."""
    from clfkit.data.hf import load_hf

    return load_hf(
        path,
        image_size=image_size,
        channels=channels,
        resize=resize,
        on_error=on_error,
        image=image,
        label=label,
        config=config,
        train_split=train_split,
        val_split=val_split,
        test_split=test_split,
    )


def _hf_peek(**args):
    from clfkit.data.hf import peek_hf

    return peek_hf(**args)


hf.peek = _hf_peek


@register("dataset", "webdataset")
def webdataset(
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    on_error: str,
    *,
    train: str | list[str],
    val: str | list[str] | None = None,
    test: str | list[str] | None = None,
    classes: Optional[list[str]] = None,
    image_key: Optional[str] = None,
    label_key: str = "cls",
    shuffle_buffer: Annotated[int, Field(ge=1)] = 512,
) -> Splits:
    """WebDataset tar shards (paths or http(s) URLs, brace patterns): train streamed while it
    trains, val/test decoded into memory; class names from classes, the manifest or classes.json/txt."""
    from clfkit.data.shard_source import load_webdataset

    return load_webdataset(
        train=train,
        val=val,
        test=test,
        image_size=image_size,
        channels=channels,
        resize=resize,
        on_error=on_error,
        classes=classes,
        image_key=image_key,
        label_key=label_key,
        shuffle_buffer=shuffle_buffer,
    )


webdataset.streamed = True  # build_data: no decode cache, val held out as whole shards


def _webdataset_peek(train, classes=None, **_):
    from clfkit.data.shard_source import class_names_for
    from clfkit.data.shards import expand, read_manifest

    urls = expand(train)
    if not urls:
        return 0, 3
    manifest = read_manifest(urls[0])
    return len(class_names_for(urls[0], classes, manifest)), int((manifest or {}).get("channels", 3))


webdataset.peek = _webdataset_peek
