"""``data.source: {name: webdataset, train: ..., val: ..., test: ...}``: the train split
streamed (clfkit.data.streamed), val and test (small) decoded into memory like any source.
Without val shards, ``data.val_fraction`` holds out whole train shards (the last ones given)."""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from typing import Any

import torch

from clfkit.data import ImageSet, Splits
from clfkit.data.shards import (
    MANIFEST,
    Shards,
    beside,
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
    manifests: dict[str, dict[str, Any] | None],
) -> Shards:
    """The shards ``pattern`` names, with their sample counts: the manifest's beside each shard
    (``manifests`` caches them by path), else counted."""
    urls = expand(pattern)
    if not urls:
        raise DataError(f"data.source {role}: {pattern!r} names no shards")
    twice = [u for u, n in Counter(urls).items() if n > 1]
    if twice:
        raise DataError(
            f"data.source {role}: shard {twice[0]} is named twice (a glob or pattern and a path to the "
            f"same file?): an epoch would read it twice; name each shard once"
        )
    entries, counts, notes = [], [], []
    by_name: dict[str, dict[str, Any]] = {}  # per manifest's path, its shard entries by file name
    for url in urls:
        where = beside(url, MANIFEST)
        if where not in by_name:
            by_name[where] = {e["name"]: e for e in (manifest_beside(url, manifests) or {}).get("shards", [])}
        entry = by_name[where].get(_name(url.split("?", 1)[0] if is_url(url) else url))
        if entry:
            _check_size(url, entry)
        entries.append(entry)
        counts.append(int(entry["count"]) if entry else count_samples(url, image_key, label_key))
    if not any(entries):
        notes.append(
            f"{role}: no manifest.json beside the shards: counted "
            f"{sum(counts)} samples by reading every shard once"
        )
    shard_classes = None
    if all(e and "per_class" in e for e in entries):
        shard_classes = [list(e["per_class"]) for e in entries]
    return Shards(urls, counts, image_key, label_key, shard_classes, notes)


def manifest_beside(url: str, manifests: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The manifest.json in the shard's own folder (read once per folder), or None."""
    where = beside(url, MANIFEST)
    if where not in manifests:
        manifests[where] = read_manifest(url)
    return manifests[where]


def _same_classes(names: list[str], manifests: dict[str, dict[str, Any] | None]) -> None:
    """Every manifest lists the run's classes in its order: shards hold class indices into it."""
    for m in manifests.values():
        if m and m.get("class_names") and list(m["class_names"]) != names:
            raise DataError(
                f"{m['__where__']} lists the classes {m['class_names']}, but the run's are {names} (from "
                f"data.source classes or another split's manifest): the shards' labels are indices into "
                f"their manifest's list, so they would name other classes. Give classes in the manifest's "
                f"order (or leave them out), or pack the splits together"
            )


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
    manifests: dict[str, dict[str, Any] | None] = {}
    sets = {
        role: open_shards(p, role, image_key, label_key, manifests) if p is not None else None
        for role, p in (("train", train), ("val", val), ("test", test))
    }
    manifest = manifest_beside(sets["train"].urls[0], manifests)
    names = class_names_for(sets["train"].urls[0], classes, manifest)
    _same_classes(names, manifests)
    c = channels or int((manifest or {}).get("channels", 3))
    decoding = Decoding(names, tuple(image_size), c, resize)
    skipped: list[tuple[str, str]] = []
    head = read_all(sets["train"], decoding, on_error, skipped, limit=HEAD)
    if not head.where:
        raise DataError(
            f"no readable training samples in the first shards of {sets['train'].urls[0]} "
            f"({len(skipped)} skipped; " + "; ".join(f"{name}: {why}" for name, why in skipped[:3]) + ")"
        )
    split = StreamedSplit(
        sets["train"],
        decoding,
        on_error,
        shuffle_buffer,
        torch.from_numpy(head.images),
        torch.from_numpy(head.labels),
        head.where,
        head.stopped_in,
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
    # the head is in shard order: one stopped in a held-out shard holds all of the kept ones
    stopped_in = min(split.head_stopped_in, len(keep.urls))
    head = (split.images[index], split.head_labels[index], [split.head_paths[i] for i in rows], stopped_in)
    kept = StreamedSplit(keep, split.decoding, split.on_error, split.shuffle_buffer, *head)
    return kept, val, skipped
