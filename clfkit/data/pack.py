"""``clfkit data pack SRC OUT``: an image folder, a CSV index or a Hugging Face dataset written
once as WebDataset shards (webdataset.ShardWriter) with a manifest, the way a large set is
prepared for streaming (``data.source: {name: webdataset}``).

The images go in as their original bytes (no decode, no resize: the recipe's size is applied
when training reads them), except that with ``raw="auto"`` (the default) a small lossless image
goes in as its decoded pixels (a ``.npy`` sample: clfkit.data.raw_pixels), which a streamed
epoch reads without decoding and which trains the same pixels. The samples go in a seeded shuffled order (a shard of one class would defeat the
streaming shuffle buffer), keys ``000000042``; labels as the class index (``.cls``).
``manifest.json`` holds the class names and, per shard, its sample count and count per class:
what a streamed run needs to plan an epoch without reading the shards first. The shards are
written into a temporary folder beside OUT and renamed into place at the end: an interrupted
pack leaves no half set, and an existing OUT is never written into.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from clfkit.data import image_files, raw_pixels
from clfkit.data.shards import MANIFEST, MANIFEST_FORMAT, wds
from clfkit.errors import DataError

RAW_CHOICES = ("auto", "never")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
FORMAT_EXT = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
    "TIFF": "tif",
    "PPM": "ppm",
}


@dataclass
class Item:
    """One image to pack: a name for messages, its bytes (read when written), its class."""

    name: str
    read: Callable[[], bytes | None]
    label: int


def shard_limits(shard_size: str) -> tuple[int, int]:
    """``--shard-size``: a sample count (1000) or a size in bytes (64M, 1G) -> (maxcount, maxsize)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(i?B)?\s*", str(shard_size), re.IGNORECASE)
    if not m or int(m.group(1)) <= 0:
        raise DataError(
            f"--shard-size {shard_size!r} is neither a sample count (e.g. 1000) nor a size (e.g. 64M, 1G)"
        )
    if m.group(2) or m.group(3):
        return 10**12, int(m.group(1)) * _UNITS[m.group(2).upper()]
    return int(m.group(1)), 10**15


def _folder_items(src: Path) -> tuple[list[str], dict[str, list[Item]], list[str]]:
    from clfkit.data.class_folders import scan_folder

    plan = scan_folder(src)
    splits, notes = {}, []
    for role, (paths, labels) in plan.splits.items():
        if labels is None:
            notes.append(f"{role}: {len(paths)} unlabelled image(s) left out (shards hold labelled samples)")
            continue
        splits[role] = [
            Item(plan.show(p), lambda p=p: image_files.read_file(p), y) for p, y in zip(paths, labels)
        ]
    return plan.class_names, splits, notes


def _csv_items(src: Path) -> tuple[list[str], dict[str, list[Item]], list[str]]:
    from clfkit.data.parsers import label_order, read_csv_index

    rows = read_csv_index(src)
    names = label_order([label for _, label in rows])
    index = {n: i for i, n in enumerate(names)}
    return (
        names,
        {"train": [Item(str(p), lambda p=p: image_files.read_file(p), index[y]) for p, y in rows]},
        [],
    )


def _hf_items(
    src: str, image: str | None, label: str | None
) -> tuple[list[str], dict[str, list[Item]], list[str]]:
    from clfkit.data import hf

    available = hf.open_dataset(src)
    train = available[hf.pick_split(available, None, ("train",), "train", required=True)]
    columns = hf.find_columns(train.features, image, label)
    hf.check_image_column(train.features, columns[0])
    names = hf.class_names_of(train.features, columns[1], train)
    to_index = hf.label_indexer(train.features, columns[1], names)
    roles = {
        "train": "train",
        "val": hf.pick_split(available, None, hf.VAL_NAMES, "val", required=False),
        "test": hf.pick_split(available, None, ("test",), "test", required=False),
    }
    splits, notes = {}, []
    for role, split in roles.items():
        if split is None:
            continue
        ds = hf.plain_images(available[split], columns[0])
        items, unlabelled = [], 0
        for i, value in enumerate(ds[columns[1]]):  # the label column alone; images read when written
            y = to_index(value)
            if y is None:
                unlabelled += 1
                continue
            name = f"{split}[{i}]"
            items.append(Item(name, lambda ds=ds, i=i, n=name: hf.image_bytes(ds[i][columns[0]], n), y))
        splits[role] = items
        if unlabelled:
            notes.append(f"{role}: {unlabelled} row(s) without a label left out")
    return names, splits, notes


def read_source(src: str, image: str | None = None, label: str | None = None):
    """(class names, {split: items}, notes) of SRC: an image folder (root/train/<class>/...), a
    CSV index (path,label rows), or a Hugging Face dataset (save_to_disk folder, parquet, cached name)."""
    p = Path(src).expanduser()
    if not p.exists() and str(src).startswith(("/", "./", "../", "~")):
        raise DataError(
            f"{src} does not exist; clfkit data pack reads an image folder (root/train/<class>/...), "
            f"a CSV index (path,label rows) or a Hugging Face dataset (a save_to_disk folder, parquet, "
            f"or a name in the local cache)"
        )
    if p.is_file() and p.suffix.lower() == ".csv":
        return _csv_items(p)
    if p.is_dir() and (p / "train").is_dir() and not (p / "dataset_dict.json").is_file():
        return _folder_items(p)
    return _hf_items(src, image, label)


def _image_ext(data: bytes) -> str | None:
    """The file extension of the image format of ``data`` (PIL reads the header only), None if
    no format recognises it."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return FORMAT_EXT.get(img.format or "", (img.format or "").lower() or None)
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes
        return None


def _write_split(
    role: str,
    items: list[Item],
    tmp: Path,
    *,
    limits: tuple[int, int],
    num_classes: int,
    skipped: list[tuple[str, str]],
    progress: Callable[[str], None],
    raw: str,
) -> list[dict[str, Any]]:
    """``role``-%06d.tar shards of ``items``; the manifest's entry of each shard."""
    shards: list[dict[str, Any]] = []
    # an integer mtime: webdataset's default (time.time(), a float) makes tarfile write a PAX
    # header before every member, which doubles the headers every read parses (measured: tar
    # parsing, not image decoding, was 2/3 of a streamed 32 px epoch's worker time)
    with wds().ShardWriter(
        str(tmp / f"{role}-%06d.tar"),
        maxcount=limits[0],
        maxsize=limits[1],
        verbose=0,
        mtime=int(time.time()),
    ) as writer:
        for k, item in enumerate(items):
            try:
                data = item.read()
            except DataError as e:
                skipped.append((item.name, str(e)))
                continue
            ext = _image_ext(data) if data else None
            if ext is None:
                skipped.append((item.name, "not a readable image"))
                continue
            pixels = raw_pixels.encode(data) if raw == "auto" else None
            writer.write(
                {
                    "__key__": f"{k:09d}",
                    **({"npy": pixels} if pixels else {ext: data}),
                    "cls": str(item.label),
                }
            )
            if not shards or shards[-1]["name"] != Path(writer.fname).name:  # the writer began a shard
                shards.append(
                    {
                        "name": Path(writer.fname).name,
                        "split": role,
                        "count": 0,
                        "per_class": [0] * num_classes,
                    }
                )
            shards[-1]["count"] += 1
            shards[-1]["per_class"][item.label] += 1
            if k % 5000 == 4999:
                progress(f"{role}: {k + 1}/{len(items)} samples")
    for empty in set(p.name for p in tmp.glob(f"{role}-*.tar")) - {s["name"] for s in shards}:
        (tmp / empty).unlink()  # the writer opens its first shard before any sample comes
    # a run checks each size: a shard changed since (appended to, cut) is not planned by stale counts
    for s in shards:
        s["bytes"] = (tmp / s["name"]).stat().st_size
    return [s for s in shards if s["count"]]


def _pattern(role: str, shards: list[dict[str, Any]]) -> str:
    """The brace pattern naming a split's shards (what a recipe's data.source gives)."""
    if len(shards) == 1:
        return shards[0]["name"]
    return f"{role}-{{{shards[0]['name'][len(role) + 1 : -4]}..{shards[-1]['name'][len(role) + 1 : -4]}}}.tar"


def _where(src: str) -> str:
    """The source as the manifest records it: a local path made absolute (a later ``clfkit data
    check`` runs from anywhere), anything else (a dataset name) as given."""
    path = Path(src).expanduser()
    return str(path.absolute()) if path.exists() else str(src)


def _refuse_inside_source(src: str, out: Path) -> None:
    """The shards never go into the folder they are read from: the data is only read (and a
    folder source would list them as images of a class on its next read)."""
    source = Path(src).expanduser()
    if source.is_dir() and image_files.contains(os.path.realpath(source), os.path.realpath(out)):
        raise DataError(
            f"{image_files.escape_path(str(out))} is inside the source folder "
            f"{image_files.escape_path(str(src))}; clfkit data pack never writes into the data it "
            f"reads: choose a folder outside it"
        )


def pack(
    src: str,
    out: str | os.PathLike,
    shard_size: str = "1000",
    *,
    seed: int = 0,
    image: str | None = None,
    label: str | None = None,
    progress: Callable[[str], None] = lambda line: None,
    raw: str = "auto",
) -> dict[str, Any]:
    """Write SRC (see :func:`read_source`) as shards in the new folder OUT; returns the manifest.
    ``raw``: "auto" stores small lossless images as raw pixels, "never" keeps every file's bytes."""
    if raw not in RAW_CHOICES:
        raise DataError(f"--raw {raw!r}: choose one of {', '.join(RAW_CHOICES)}")
    out = Path(out).expanduser()
    if out.exists():
        raise DataError(
            f"{out} exists; clfkit data pack writes a new folder and never writes into an existing one"
        )
    if not out.parent.is_dir():
        raise DataError(f"the folder {out.parent} for {out.name} does not exist")
    _refuse_inside_source(src, out)
    limits = shard_limits(shard_size)
    class_names, splits, notes = read_source(src, image, label)
    if not splits.get("train"):
        raise DataError(f"{src}: no labelled training images to pack")
    tmp = out.parent / f".{out.name}.packing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    skipped: list[tuple[str, str]] = []
    try:
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "class_names": class_names,
            "source": _where(src),
            "seed": seed,
            "raw": raw,
            "splits": {},
            "shards": [],
        }
        for role, items in splits.items():
            items = list(items)
            random.Random(f"{seed}/{role}").shuffle(items)  # classes mixed within every shard
            written = _write_split(
                role,
                items,
                tmp,
                limits=limits,
                num_classes=len(class_names),
                skipped=skipped,
                progress=progress,
                raw=raw,
            )
            if written:
                manifest["shards"] += written
                manifest["splits"][role] = {
                    "pattern": _pattern(role, written),
                    "count": sum(s["count"] for s in written),
                }
        manifest.update(skipped=[list(s) for s in skipped], notes=notes)
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def pack_summary(manifest: dict[str, Any], out: Path) -> list[str]:
    """What ``clfkit data pack`` prints: the splits written, what was left out, the data.source
    to use (JSON-quoted: a brace pattern is not plain YAML)."""
    splits = manifest["splits"]
    lines = [
        f"{role}: {split['count']} samples in {out / split['pattern']}" for role, split in splits.items()
    ]
    lines += [f"note: {note}" for note in manifest["notes"]]
    if manifest["skipped"]:
        lines.append(f"{len(manifest['skipped'])} unreadable image(s) left out, listed in {out / MANIFEST}")
    given = ", ".join(
        f"{r}: {json.dumps(str(out / splits[r]['pattern']))}" for r in ("train", "val", "test") if r in splits
    )
    return lines + [f"recipe: data.source: {{name: webdataset, {given}}}"]
