"""``data.source: {name: hf, path: ...}``: a Hugging Face dataset read through the ``datasets``
library, never downloaded. ``path`` is a ``save_to_disk`` folder, a parquet file or a folder of
them (split names from the file names, as ``datasets`` infers them), or a dataset name already
in the local Hugging Face cache. The image column is found from the features (a
``datasets.Image``), the label column too (a ``ClassLabel``: its names become the class names),
unless the recipe names them; train/val/test are the dataset's own splits.

The decoded images become uint8 tensors like every other source: a Hugging Face dataset is
decoded once (and held in memory or, with ``data.storage: disk``, in a file), not streamed;
WebDataset shards (clfkit.data.shards) are the streamed format.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from clfkit.data import ImageSet, Splits
from clfkit.data.blobs import decode_blobs
from clfkit.data.class_folders import auto_channels, to_image_set
from clfkit.errors import DataError

VAL_NAMES = ("validation", "val", "valid", "dev")
IMAGE_NAMES = ("image", "img", "images", "picture", "jpg", "png")
LABEL_NAMES = ("label", "labels", "class", "cls", "target", "fine_label")
BLOCK = 2048  # rows decoded at a time: a split's raw bytes are never all in memory at once


def _datasets():
    """The ``datasets`` library in offline mode: clfkit never downloads (a missing dataset is an
    error saying what to fetch). Set before the import, and on the imported modules when another
    import came first."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
        import huggingface_hub.constants
    except ImportError as e:
        raise DataError(
            f"data.source hf needs the `datasets` package ({e}); pip install 'clfkit[data]'"
        ) from None
    datasets.config.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()  # clfkit's own run log says what was read
    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    return datasets


def open_dataset(path: str, config: str | None = None) -> dict[str, Any]:
    """{split name: datasets.Dataset} of ``path`` (see the module doc)."""
    datasets = _datasets()
    p = Path(path).expanduser()
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(p))
        elif p.is_file():
            if p.suffix.lower() != ".parquet":
                raise DataError(
                    f"{p} is not a parquet file; data.source hf reads a save_to_disk folder, "
                    f"parquet files, or a dataset name in the local Hugging Face cache"
                )
            loaded = datasets.load_dataset("parquet", data_files={"train": str(p)})
        elif p.is_dir():
            loaded = datasets.load_dataset(str(p), config)
        else:
            loaded = datasets.load_dataset(path, config)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; name the cause
        raise DataError(_not_loaded(path, p, e)) from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _not_loaded(path: str, p: Path, e: Exception) -> str:
    why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(e))
    if p.exists() and empty:  # datasets' words for a split whose files hold no rows
        return (
            f"the Hugging Face dataset at {p} has an empty split {empty.group(1)!r} (its file(s) hold no rows): "
            f"remove them, or give that split rows ({why})"
        )
    if p.exists():
        return f"cannot read the Hugging Face dataset at {p} ({why})"
    if path.startswith(("/", "./", "../", "~")):  # a path, not a Hub name
        return (
            f"{p} does not exist; data.source hf reads a save_to_disk folder, parquet file(s), or a dataset "
            f"name in the local Hugging Face cache"
        )
    cache = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"{path!r} is neither a local folder or parquet file nor a dataset in the local Hugging Face cache "
        f"({cache}); clfkit does not download. Fetch it on a machine with internet access, e.g. "
        f"`python -c \"import datasets; datasets.load_dataset('{path}').save_to_disk('DIR')\"` and give "
        f"path: DIR, or `hf download --repo-type dataset {path}` into the cache ({why})"
    )


def pick_split(
    available: dict[str, Any], wanted: str | None, defaults: tuple[str, ...], role: str, required: bool
) -> str | None:
    if wanted is not None:
        if wanted not in available:
            raise DataError(f"the dataset has no split {wanted!r} ({role}); its splits: {sorted(available)}")
        return wanted
    found = next((s for s in defaults if s in available), None)
    if found is None and required:
        raise DataError(
            f"the dataset has no {role} split named {' or '.join(map(repr, defaults))}; its "
            f"splits: {sorted(available)} (name one with {role}_split: NAME)"
        )
    return found


def _columns(features: dict[str, Any]) -> str:
    return ", ".join(f"{k} ({_kind(v)})" for k, v in features.items())


def _kind(feature: Any) -> str:
    name = type(feature).__name__
    return name if name in ("Image", "ClassLabel") else str(getattr(feature, "dtype", None) or name)


def find_columns(features: Any, image: str | None, label: str | None) -> tuple[str, str]:
    """The image and label columns: as named, else found from the feature types, then names."""
    import datasets

    def pick(named: str | None, role: str, kinds: tuple, names: tuple[str, ...]) -> str:
        if named is not None:
            if named not in features:
                raise DataError(
                    f"the dataset has no {role} column {named!r}; its columns: {_columns(features)}"
                )
            return named
        typed = [k for k, v in features.items() if isinstance(v, kinds)]
        if len(typed) == 1:
            return typed[0]
        by_name = [k for k in (typed or features) if k.lower() in names]
        if len(by_name) == 1:
            return by_name[0]
        raise DataError(
            f"cannot tell which column holds the {role}s ({'several' if typed else 'none'} of type "
            f"{kinds[0].__name__}); name it with {role}: COLUMN. Its columns: {_columns(features)}"
        )

    image_col = pick(image, "image", (datasets.Image,), IMAGE_NAMES)
    label_col = pick(label, "label", (datasets.ClassLabel,), LABEL_NAMES)
    return image_col, label_col


def class_names_of(features: Any, label_col: str, train: Any) -> list[str]:
    """ClassLabel names, else the label column's values: integers 0..max, or sorted strings."""
    import datasets

    from clfkit.data.parsers import label_order

    feature = features[label_col]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    dtype = _kind(feature)
    if dtype in ("string", "large_string"):
        return label_order([str(v) for v in train.unique(label_col) if not _blank(v)])
    if dtype.startswith(("int", "uint")):
        values = [v for v in train.unique(label_col) if v is not None]
        if any(v < 0 for v in values):
            return [str(v) for v in sorted(values)]
        return [str(i) for i in range(max(values, default=-1) + 1)]
    raise DataError(f"label column {label_col!r} is {dtype}; expected a ClassLabel, integers or strings")


def image_bytes(value: Any, name: str) -> bytes | None:
    """The bytes of one cell of an image column read with decode=False (a dict of bytes and
    path), or of a plain binary column."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and Path(value["path"]).is_file():
            return Path(value["path"]).read_bytes()
    return None


def _blank(value: Any) -> bool:
    """No label: None, or an empty or all-space string (a CSV row with one is refused; here, as
    rows go, it is a counted skip, never a class named '')."""
    return value is None or (isinstance(value, str) and not value.strip())


def label_indexer(features: Any, label_col: str, class_names: list[str]):
    """label value -> class index, None for "no label" (None, or -1 as datasets writes it for
    unlabelled rows); a value outside the classes raises."""
    import datasets

    is_class_label = isinstance(features[label_col], datasets.ClassLabel)
    index = {name: i for i, name in enumerate(class_names)}

    def to_index(value: Any) -> int | None:
        if _blank(value) or (is_class_label and value == -1):
            return None
        i = value if is_class_label else index.get(str(value))
        if i is None or not 0 <= i < len(class_names):
            raise ValueError(value)
        return i

    return to_index


def check_image_column(features: Any, image_col: str) -> None:
    import datasets

    feature = features[image_col]
    if isinstance(feature, datasets.Image) or _kind(feature) in ("binary", "large_binary"):
        return
    raise DataError(
        f"image column {image_col!r} is {_kind(feature)}, not images (a datasets.Image or binary "
        f"column); its columns: {_columns(features)}"
    )


def plain_images(ds: Any, image_col: str) -> Any:
    """``ds`` with its image column as bytes (datasets.Image(decode=False)): clfkit decodes them
    through its own path (clfkit.data.image_files), as it decodes files."""
    import datasets

    if isinstance(ds.features[image_col], datasets.Image):
        return ds.cast_column(image_col, datasets.Image(decode=False))
    return ds


def read_split(
    ds: Any,
    split: str,
    *,
    columns: tuple[str, str],
    to_index,
    settings: dict[str, Any],
    skipped: list[tuple[str, str]],
    digest,
) -> tuple[list, list[int | None]]:
    """Decode one split in blocks: (decode results, class index per row or None)."""

    image_col, label_col = columns
    ds = plain_images(ds, image_col)
    decoded, labels = [], []
    for start in range(0, len(ds), BLOCK):
        block = ds[start : start + BLOCK]
        names = [f"{split}[{start + k}]" for k in range(len(block[image_col]))]
        for name, value in zip(names, block[label_col]):
            try:
                labels.append(to_index(value))
            except ValueError:
                raise DataError(
                    f"{name}: label {value!r} in column {label_col!r} is not one of the "
                    f"{settings['num_classes']} classes of the train split"
                ) from None
        blobs = [(n, image_bytes(v, n)) for n, v in zip(names, block[image_col])]
        decoded += decode_blobs(
            blobs,
            settings["size"],
            settings["channels"],
            resize=settings["resize"],
            on_error=settings["on_error"],
            skipped=skipped,
            digest=digest,
        )
        digest.update(repr(labels[-len(names) :]).encode())
    return decoded, labels


def _to_set(
    split: str,
    decoded: list,
    labels: list[int | None],
    gray: bool,
    on_error: str,
    skipped: list[tuple[str, str]],
) -> ImageSet | None:
    """The split's ImageSet: rows without a label skipped (listed) or, on_error: fail, an
    error; a test split with no labels at all stays unlabelled."""
    if split == "test" and all(label is None for label in labels):
        return to_image_set(decoded, None, None, gray)
    for i, label in enumerate(labels):
        if label is None and decoded[i] is not None:
            if on_error == "fail":
                raise DataError(f"{split}[{i}] has no label (set data.on_error: skip to skip such rows)")
            skipped.append((f"{split}[{i}]", "no label"))
            decoded[i] = None
    return to_image_set(decoded, [-1 if v is None else v for v in labels], None, gray)


def load_hf(
    path: str,
    *,
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    on_error: str,
    image: str | None = None,
    label: str | None = None,
    config: str | None = None,
    train_split: str | None = None,
    val_split: str | None = None,
    test_split: str | None = None,
) -> Splits:
    """The dataset at ``path`` as Splits (see the module doc)."""
    available = open_dataset(path, config)
    roles = {
        "train": pick_split(available, train_split, ("train",), "train", required=True),
        "val": pick_split(available, val_split, VAL_NAMES, "val", required=False),
        "test": pick_split(available, test_split, ("test",), "test", required=False),
    }
    train = available[roles["train"]]
    columns = find_columns(train.features, image, label)
    check_image_column(train.features, columns[0])
    class_names = class_names_of(train.features, columns[1], train)
    if len(class_names) < 2:
        raise DataError(
            f"{path}: the train split has {len(class_names)} class(es) in column {columns[1]!r}; "
            f"need at least two"
        )
    to_index = label_indexer(train.features, columns[1], class_names)
    settings = dict(
        size=tuple(image_size),
        channels=channels,
        resize=resize,
        on_error=on_error,
        num_classes=len(class_names),
    )
    skipped: list[tuple[str, str]] = []
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((columns, class_names)).encode())
    raw = {}
    for role, name in roles.items():
        if name is None:
            continue
        ds = available[name]
        missing = [c for c in columns if c not in ds.features]
        if missing:
            raise DataError(f"split {name!r} lacks column(s) {missing}; its columns: {_columns(ds.features)}")
        raw[role] = read_split(
            ds, name, columns=columns, to_index=to_index, settings=settings, skipped=skipped, digest=digest
        )
    gray = channels is None and auto_channels(raw["train"][0]) == 1
    sets = {
        role: _to_set(role, decoded, labels, gray, on_error, skipped)
        for role, (decoded, labels) in raw.items()
    }
    if sets["train"] is None:
        raise DataError(
            f"{path}: no readable training images in split {roles['train']!r} ({len(skipped)} skipped)"
        )
    return Splits(
        train=sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        class_names=class_names,
        skipped=skipped,
        description=f"Hugging Face dataset {path}",
        fingerprint=digest.hexdigest(),
    )


def peek_hf(
    path: str,
    image: str | None = None,
    label: str | None = None,
    config: str | None = None,
    train_split: str | None = None,
    **_,
) -> tuple[int, int]:
    """(num_classes, 3) from the features alone, for ``clfkit recipe check``."""
    available = open_dataset(path, config)
    train = available[pick_split(available, train_split, ("train",), "train", required=True)]
    columns = find_columns(train.features, image, label)
    check_image_column(train.features, columns[0])
    return len(class_names_of(train.features, columns[1], train)), 3
