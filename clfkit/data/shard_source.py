"""``data.source: {name: webdataset, train: ..., val: ..., test: ...}``: the train split
streamed (clfkit.data.streamed), val and test (small) decoded into memory like any source.
Without val shards, ``data.val_fraction`` holds out whole train shards (the last ones given)."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

import torch

from clfkit.data import ImageSet, Splits
from clfkit.data.shards import (
    Shards,
    class_names_beside,
    count_samples,
    expand,
    is_url,
    read_manifest,
)
from clfkit.data.streamed import HEAD, Decoding, StreamedSplit, read_all
from clfkit.errors import DataError


def _name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def open_shards(
    pattern: str | list[str],
    role: str,
    image_key: str | None,
    label_key: str,
    manifest: dict[str, Any] | None,
) -> Shards:
    """The shards ``pattern`` names, with their sample counts (the manifest's, else counted)."""
    urls = expand(pattern)
    if not urls:
        raise DataError(f"data.source {role}: {pattern!r} names no shards")
    listed = {s["name"]: s for s in (manifest or {}).get("shards", [])}
    counts, notes, shard_classes = [], [], None
    for url in urls:
        entry = listed.get(_name(url))
        if entry:
            _check_size(url, entry)
        counts.append(int(entry["count"]) if entry else count_samples(url, image_key, label_key))
    if manifest is None:
        notes.append(
            f"{role}: no manifest.json beside the shards: counted "
            f"{sum(counts)} samples by reading every shard once"
        )
    if listed and all(_name(u) in listed and "per_class" in listed[_name(u)] for u in urls):
        shard_classes = [list(listed[_name(u)]["per_class"]) for u in urls]
    return Shards(urls, counts, image_key, label_key, shard_classes, notes)


def _check_size(url: str, entry: dict[str, Any]) -> None:
    """A local shard whose size is not the manifest's changed after clfkit data pack wrote it:
    its counts would plan the epoch wrong (samples appended never read, a cut one a late error)."""
    if "bytes" not in entry or is_url(url) or not os.path.isfile(url):
        return
    size = os.path.getsize(url)
    if size != int(entry["bytes"]):
        raise DataError(
            f"shard {url} is {size:,} bytes, but manifest.json beside it says {int(entry['bytes']):,}: it "
            f"changed after clfkit data pack wrote it. Pack the data again, or delete manifest.json to "
            f"have the run count the samples of every shard at its start"
        )


def class_names_for(
    first_shard: str, classes: list[str] | None, manifest: dict[str, Any] | None
) -> list[str]:
    """The recipe's ``classes``, else the manifest's, else classes.json / classes.txt beside the shards."""
    names = classes or (manifest or {}).get("class_names") or class_names_beside(first_shard)
    if not names:
        raise DataError(
            f"no class names for the shards at {first_shard}: give classes: [...] in data.source, or put "
            f"classes.json (a list) or classes.txt (one a line) beside them (clfkit data pack writes "
            f"manifest.json with them)"
        )
    if len(names) < 2 or len(set(names)) != len(names):
        raise DataError(f"class names must be at least two and distinct; got {names}")
    return list(names)


def _in_memory(
    shards: Shards | None, decoding: Decoding, on_error: str, skipped: list[tuple[str, str]]
) -> ImageSet | None:
    if shards is None:
        return None
    got = read_all(shards, decoding, on_error, skipped)
    return (
        ImageSet(torch.from_numpy(got.images), torch.from_numpy(got.labels), got.where) if got.where else None
    )


def load_webdataset(
    *,
    train: str | list[str],
    image_size: tuple[int, int],
    channels: int | None,
    resize: str,
    on_error: str,
    val: str | list[str] | None = None,
    test: str | list[str] | None = None,
    classes: list[str] | None = None,
    image_key: str | None = None,
    label_key: str = "cls",
    shuffle_buffer: int = 512,
) -> Splits:
    """Splits whose train is a StreamedSplit; val and test decoded into memory."""
    first = expand(train)[:1]
    manifest = read_manifest(first[0]) if first else None
    sets = {
        role: open_shards(p, role, image_key, label_key, manifest) if p is not None else None
        for role, p in (("train", train), ("val", val), ("test", test))
    }
    names = class_names_for(sets["train"].urls[0], classes, manifest)
    c = channels or int((manifest or {}).get("channels", 3))
    decoding = Decoding(names, tuple(image_size), c, resize)
    skipped: list[tuple[str, str]] = []
    head = read_all(sets["train"], decoding, on_error, skipped, limit=HEAD)
    if not head.where:
        raise DataError(
            f"no readable training samples in the first shards of {sets['train'].urls[0]} "
            f"({len(skipped)} skipped: {skipped[:3]})"
        )
    split = StreamedSplit(
        sets["train"],
        decoding,
        on_error,
        shuffle_buffer,
        torch.from_numpy(head.images),
        torch.from_numpy(head.labels),
        head.where,
        head.complete,
    )
    digest = hashlib.blake2b(
        repr((names, [(s.urls, s.counts) for s in sets.values() if s is not None])).encode(), digest_size=16
    )
    if manifest is not None:
        digest.update(repr(sorted((k, v) for k, v in manifest.items() if k != "__where__")).encode())
    return Splits(
        train=split,
        val=_in_memory(sets["val"], decoding, on_error, skipped),
        test=_in_memory(sets["test"], decoding, on_error, skipped),
        class_names=names,
        skipped=skipped,
        description=f"WebDataset shards {sets['train'].urls[0]}"
        + (f" (+{len(sets['train'].urls) - 1})" if len(sets["train"].urls) > 1 else "")
        + "".join(f" [{note}]" for s in sets.values() if s is not None for note in s.notes),
        fingerprint=digest.hexdigest(),
    )


def hold_out(
    split: StreamedSplit, fraction: float, skipped: list[tuple[str, str]]
) -> tuple[StreamedSplit, ImageSet | None, list[tuple[str, str]]]:
    """``fraction`` of the train shards (whole shards, the last ones) decoded into memory as val:
    (train, val, ``skipped`` with the held-out shards' samples listed once, as val's)."""
    shards = split.shards
    n = len(shards.urls)
    k = min(n - 1, max(1, math.ceil(n * fraction)))
    if n < 2:
        raise DataError(
            f"data.val_fraction {fraction} holds out whole shards, and the train split is one shard "
            f"({shards.urls[0]}); give val: SHARDS in data.source, or set data.val_fraction: 0"
        )
    keep, held = shards.subset(0, n - k), shards.subset(n - k, n)
    held_prefixes = tuple(f"{u}#" for u in held.urls)
    skipped = [s for s in skipped if not s[0].startswith(held_prefixes)]  # read again just below
    val = _in_memory(held, split.decoding, split.on_error, skipped)
    rows = [i for i, p in enumerate(split.head_paths) if not p.startswith(held_prefixes)]
    if not rows:
        raise DataError(
            f"no readable training samples in {keep.urls[0]} and the other train shards kept after "
            f"data.val_fraction {fraction} held out the last {k}"
        )
    index = torch.tensor(rows, dtype=torch.long)
    # the head is in shard order: one that reached the held-out shards holds all of the kept ones
    complete = split.head_complete or len(rows) < len(split.head_paths)
    head = (split.images[index], split.head_labels[index], [split.head_paths[i] for i in rows], complete)
    kept = StreamedSplit(keep, split.decoding, split.on_error, split.shuffle_buffer, *head)
    return kept, val, skipped
