"""A disk cache of decoded datasets: a folder is decoded once, and every later run, sweep
point or DDP rank with the same decode settings loads the uint8 tensors instead.

An entry is named ``<group>-<fingerprint>``. The group hashes the source (dataset name and
resolved root), the decode settings (size, channels, resize, on_error), the cache format and
the PIL version (a new PIL may resize differently). The fingerprint hashes what the dataset
read: for a folder, every file's relative path and a blake2b hash of its bytes (symbolic
links followed), so an edit that keeps size and mtime, a file swapped under a linked folder
or a re-pointed link all change it. Stale pixels are never served: an entry is only read
after every file has been hashed again, and it is stored under the fingerprint of the very
bytes that were decoded. When no entry of the group exists (a first run) the files are read
once, by the decoder; otherwise each file is read twice on a miss (hash, then decode) and
once on a hit. Older entries of the group are deleted when a new one is written.

Layout, no pickle anywhere (arrays load with ``allow_pickle=False``)::

    <cache dir>/<group>-<fingerprint>/
      index.json                  class names, paths, skipped files, description, shapes,
                                  and a blake2b hash of each array file's contents
      train.images.npy            uint8 (N, C, H, W)
      train.labels.npy            int64 (N,)      (and val.*, test.* when present)

An entry is written into a temporary folder beside it and renamed into place, so a crash or
a concurrent writer never leaves a half entry that a reader would take. What is read back is
checked (hashes, shapes, dtypes, label range, counts); an entry that fails is reported in one
warning line and decoded again. A cache dir that cannot be written (read-only, disk full) is
reported in one warning line; the run goes on with the decoded data.

With ``data.storage: disk`` (or ``auto`` over the memory budget) the entry's image files are
the training data: a folder decodes straight into the new entry's temp folder, and the splits
are reopened from the entry (clfkit.data.disk_spill, clfkit.data.disk_storage); a hit checks each
file's hash by reading it through in blocks instead of loading it.

The cache dir is ``$CLFKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/clfkit``, else
``~/.cache/clfkit``; ``CLFKIT_CACHE=0`` turns the cache off. It is a property of the machine,
not of the recipe, so recipes stay portable.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from clfkit.data import ImageSet, Splits, disk_storage as storage
from clfkit.data import disk_spill
from clfkit.data.class_folders import folder_fingerprint
from clfkit.errors import DataError

# Bump whenever the same file bytes would decode to other pixels (the key cannot see code changes).
FORMAT = 4  # 3: EXIF orientation applied; content-hash fingerprints; entries checked on read;
# 4: 16/32-bit and float images by a fixed range per mode (image_files.WIDE_MODES)
SPLITS = ("train", "val", "test")


def cache_dir() -> Optional[Path]:
    """Where entries live, or None when caching is turned off (``CLFKIT_CACHE=0``)."""
    if os.environ.get("CLFKIT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return cache_location()


def cache_location() -> Path:
    """The cache dir, whether or not caching is on (disk storage keeps uncached splits there)."""
    if os.environ.get("CLFKIT_CACHE_DIR"):
        return Path(os.environ["CLFKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clfkit"


def group_name(source: str, settings: dict[str, Any]) -> str:
    """The name prefix shared by every entry of one dataset source decoded with ``settings``."""
    import PIL

    blob = json.dumps(
        {"format": FORMAT, "source": source, "settings": settings, "pil": PIL.__version__}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _array_hash(arr: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(arr), digest_size=16).hexdigest()


def warn(message: str) -> None:
    """One line on stderr: the cache never stops a run, but its failures are not silent."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- write
def _save_array(folder: Path, name: str, arr: np.ndarray, hashes: dict[str, str]) -> None:
    with open(folder / name, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    hashes[name] = _array_hash(arr)


def _write_splits(folder: Path, splits: Splits, index: dict[str, Any]) -> None:
    """Each split's arrays into ``folder`` and into the index. A disk split decoded into
    ``folder`` already (clfkit.data.disk_storage) is hashed from its file, in blocks."""
    for name in SPLITS:
        s: Optional[ImageSet] = getattr(splits, name)
        if s is None:
            continue
        file = f"{name}.images.npy"
        if storage.is_disk(s.images) and s.images.rows is None and Path(s.images.path) == folder / file:
            index["hashes"][file] = s.images.data_hash()
        elif storage.is_disk(s.images):  # rows of another file (not made by a loader)
            storage.copy_rows(s.images, np.arange(len(s.images)), folder / file)
            index["hashes"][file] = storage.DiskImages(folder / file).data_hash()
        else:
            _save_array(folder, file, s.images.cpu().numpy(), index["hashes"])
        if s.labels is not None:
            _save_array(folder, f"{name}.labels.npy", s.labels.cpu().numpy(), index["hashes"])
        index["splits"][name] = {
            "n": len(s),
            "shape": list(s.images.shape),
            "labelled": s.labels is not None,
            "paths": s.paths,
        }


def write_entry(path: Path, splits: Splits, meta: dict[str, Any], tmp: Optional[Path] = None) -> None:
    """Write ``splits`` as the entry ``path`` atomically (temp folder, then rename). ``tmp``:
    the temp folder when the loader has decoded disk splits into it already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    made = tmp is None
    tmp = tmp or disk_spill.locked_temp_folder(path.parent, f".{path.name}.", ".tmp")
    try:
        index: dict[str, Any] = {
            "format": FORMAT,
            **meta,
            "class_names": splits.class_names,
            "description": splits.description,
            "skipped": [list(s) for s in splits.skipped],
            "splits": {},
            "hashes": {},
        }
        _write_splits(tmp, splits, index)
        with open(tmp / "index.json", "w", encoding="utf-8") as f:  # written last: marks complete
            json.dump(index, f)  # ASCII escapes: any file name, non-UTF-8 bytes included, fits
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, path)
        except OSError:  # another process put the same entry in place first: theirs is as good
            if not (path / "index.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if made:
            disk_spill.release(tmp)


# --------------------------------------------------------------------------- read and check
class DamagedEntry(Exception):
    """A cache entry whose files do not hold what its index says; the message says what."""


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise DamagedEntry(problem)


def _load_array(path: Path, name: str, index: dict[str, Any]) -> np.ndarray:
    try:
        arr = np.load(path / name, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # missing, truncated, not an .npy file
        raise DamagedEntry(f"{name}: {e}") from None
    _require(
        _array_hash(arr) == index["hashes"].get(name), f"{name}: its contents changed since it was written"
    )
    return arr


def _open_disk_array(path: Path, name: str, index: dict[str, Any]) -> storage.DiskImages:
    try:
        images = storage.DiskImages(path / name)
    except DataError as e:  # missing, truncated, not an .npy file
        raise DamagedEntry(str(e)) from None
    _require(
        images.data_hash() == index["hashes"].get(name), f"{name}: its contents changed since it was written"
    )
    return images


def _read_split(
    path: Path,
    name: str,
    info: dict[str, Any],
    index: dict[str, Any],
    settings: dict[str, Any],
    on_disk: bool = False,
) -> ImageSet:
    n, classes = info["n"], len(index["class_names"])
    images = (_open_disk_array if on_disk else _load_array)(path, f"{name}.images.npy", index)
    size, channels = tuple(settings["image_size"]), settings["channels"]
    _require(
        images.dtype in (np.uint8, torch.uint8)
        and images.ndim == 4
        and len(images) == n
        and images.shape[2:] == size
        and images.shape[1] in ((1, 3) if channels is None else (channels,)),
        f"{name} images are {images.dtype} {images.shape}, expected uint8 ({n}, C, {size[0]}, {size[1]})",
    )
    labels = None
    if info["labelled"]:
        labels = _load_array(path, f"{name}.labels.npy", index)
        _require(
            labels.dtype == np.int64 and labels.shape == (n,),
            f"{name} labels are {labels.dtype} {labels.shape}, expected int64 ({n},)",
        )
        _require(
            n == 0 or (labels.min() >= 0 and labels.max() < classes),
            f"{name} labels {labels.min()}..{labels.max()} are outside 0..{classes - 1}",
        )
    paths = info["paths"]
    _require(
        paths is None
        or (isinstance(paths, list) and len(paths) == n and all(isinstance(p, str) for p in paths)),
        f"{name} paths are not {n} names",
    )
    return ImageSet(
        images if on_disk else torch.from_numpy(images),
        torch.from_numpy(labels) if labels is not None else None,
        paths,
    )


def read_entry(path: Path, settings: dict[str, Any], storage_mode: str = "memory") -> Splits:
    """The cached Splits, checked against the index and ``settings``; DamagedEntry if not
    sound. ``storage_mode`` (data.storage): disk splits stay in their files (checked by
    reading them through once, in blocks)."""
    try:
        index = json.loads((path / "index.json").read_text(encoding="utf-8"))
        _require(index.get("format") == FORMAT, f"format {index.get('format')}, expected {FORMAT}")
        names = index["class_names"]
        _require(
            isinstance(names, list) and len(names) >= 1 and all(isinstance(c, str) for c in names),
            "class names are not a list of names",
        )
        _require(
            "train" in index["splits"] and set(index["splits"]) <= set(SPLITS),
            "the splits are not train/val/test",
        )
        nbytes = sum(int(np.prod(info["shape"])) for info in index["splits"].values())
        on_disk = storage.resolve(storage_mode, nbytes) == "disk"
        sets = {
            name: _read_split(path, name, info, index, settings, on_disk)
            for name, info in index["splits"].items()
        }
        _require(sets["train"].labels is not None and len(sets["train"]) > 0, "train has no labelled images")
        _require(
            len({s.images.shape[1] for s in sets.values()}) == 1, "the splits have different channel counts"
        )
        skipped = [tuple(s) for s in index["skipped"]]
        _require(all(len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped), "bad skipped list")
        return Splits(
            train=sets["train"],
            class_names=names,
            val=sets.get("val"),
            test=sets.get("test"),
            skipped=skipped,
            description=str(index["description"]),
            fingerprint=index.get("fingerprint"),
        )
    except DamagedEntry:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        DataError,
    ) as e:  # no index, bad JSON, types
        raise DamagedEntry(f"index.json: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------- the entry point
FINGERPRINTS: dict[str, Callable[..., str]] = {
    # dataset name -> fingerprint of its args (reads every file). Only datasets read from
    # files are worth caching; each must also set Splits.fingerprint the same way.
    "folder": lambda root, **_: folder_fingerprint(root),
}


def _entries(base: Path, group: str) -> list[Path]:
    try:
        return [p for p in base.glob(f"{group}-*") if p.is_dir()]
    except OSError:  # an unreadable cache dir is a miss; writing will say why
        return []


def _lookup(
    base: Path,
    group: str,
    fingerprint_of: Callable[[], str],
    settings: dict[str, Any],
    log: Callable[[str], None],
    storage_mode: str,
) -> Optional[Splits]:
    """The cached Splits for the data as it is now, or None."""
    if not _entries(base, group):  # a first run: skip hashing, the decoder hashes what it reads
        return None
    path = base / f"{group}-{fingerprint_of()}"
    if not path.is_dir():
        return None
    t0 = time.perf_counter()
    try:
        hit = read_entry(path, settings, storage_mode)
    except DamagedEntry as e:
        log(f"the data cache entry {path} is damaged ({e}); decoding the images again")
        return None
    hit.description += f" (decoded images from cache {path}, {time.perf_counter() - t0:.1f}s)"
    _prune_group(base, group, keep=path)
    return hit


# entry folder -> an open descriptor of its index.json, share-locked while this process may
# read the entry's files (disk storage; kept until exit: loader workers reopen the files)
_HELD: dict[Path, int] = {}


def _hold(splits: Splits) -> Splits:
    """Share-lock the entry whose files ``splits`` reads from (disk storage), so another run
    that writes a newer entry of the group leaves this one in place instead of deleting it
    under a running training (its loader workers open the files anew each epoch)."""
    for s in (splits.train, splits.val, splits.test):
        entry = Path(s.images.path).parent if s is not None and storage.is_disk(s.images) else None
        if entry is None or entry in _HELD:
            continue
        try:
            fd = os.open(entry / "index.json", os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            _HELD[entry] = fd
        except OSError:  # not an entry (a private folder), or locked: the run goes on unlocked
            pass
    return splits


def _in_use(entry: Path) -> bool:
    """Whether a process (this one included) holds ``entry`` (see :func:`_hold`)."""
    if entry in _HELD:
        return True
    try:
        fd = os.open(entry / "index.json", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _store(
    base: Path,
    group: str,
    splits: Splits,
    meta: dict[str, Any],
    log: Callable[[str], None],
    tmp: Optional[Path] = None,
) -> Optional[Path]:
    """Write the entry (from ``tmp`` when disk splits were decoded there); its path, or None
    when it could not be written."""
    path = base / f"{group}-{splits.fingerprint}"
    try:
        if path.exists():  # damaged (see _lookup): replace it
            if path in _HELD:
                os.close(_HELD.pop(path))
            shutil.rmtree(path)
        write_entry(path, splits, {**meta, "fingerprint": splits.fingerprint}, tmp)
        _prune_group(base, group, keep=path)
        _prune_format_2(base, meta["source"])
    except OSError as e:  # a read-only or full cache dir must not stop training
        log(
            f"could not write the data cache {path}: {disk_spill.unwritable(path, e)}; the run goes on without it"
        )
        return None
    return path


def _prune_group(base: Path, group: str, keep: Path) -> None:
    """Delete the group's entries other than ``keep`` (the same data and settings, files since
    changed), except one a running training reads (see :func:`_hold`): a later run deletes it."""
    for old in _entries(base, group):
        if old != keep and not _in_use(old):
            shutil.rmtree(old, ignore_errors=True)


def _prune_format_2(base: Path, source: str) -> None:
    """Delete this source's entries from clfkit before format 3 (named by one 32-digit hash,
    keyed by size and mtime): they are never read again."""
    for entry in base.iterdir():
        if len(entry.name) != 32 or "-" in entry.name:
            continue
        try:
            index = json.loads((entry / "index.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(index, dict) and index.get("format", FORMAT) < FORMAT and index.get("source") == source:
            shutil.rmtree(entry, ignore_errors=True)


def cached(
    name: str,
    args: dict[str, Any],
    settings: dict[str, Any],
    load: Callable[[], Splits],
    log: Callable[[str], None] = warn,
    storage_mode: str = "memory",
) -> Splits:
    """``load()`` through the cache: the cached Splits when the dataset's files and the
    settings are unchanged, else ``load()`` once and store its result. Datasets without a
    fingerprint (procedural ones) and a turned-off cache go straight to ``load()``.
    ``storage_mode`` (data.storage): "disk" (or "auto" above the memory budget) returns splits
    whose images stay in the entry's files (clfkit.data.disk_storage)."""
    base = cache_dir()
    fingerprint_of = FINGERPRINTS.get(name)
    if base is None or fingerprint_of is None:
        return (
            load()
            if storage_mode == "memory"
            else disk_spill.uncached(load, storage_mode, cache_location(), log)
        )
    source = f"{name}:{Path(str(args.get('root', ''))).expanduser().resolve()}" if "root" in args else name
    group = group_name(source, settings)
    hit = _lookup(base, group, lambda: fingerprint_of(**args), settings, log, storage_mode)
    if hit is not None:
        return _hold(hit)
    meta = {"source": source, "settings": settings}
    disk_spill.remove_stale(base, f".{group}-*.tmp")  # left by a run killed while it wrote an entry
    if storage_mode != "memory":
        return _hold(
            disk_spill.cached_miss(
                load,
                storage_mode,
                base=base,
                group=group,
                log=log,
                store=lambda splits, tmp: _store(base, group, splits, meta, log, tmp),
                fingerprint_of=lambda: fingerprint_of(**args),
            )
        )
    splits = load()
    if splits.fingerprint is None:  # a dataset that does not hash while it reads: hash now
        splits.fingerprint = fingerprint_of(**args)
    _store(base, group, splits, meta, log)
    return splits
