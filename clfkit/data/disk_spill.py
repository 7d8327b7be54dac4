"""The data cache's side of ``data.storage: disk`` (and ``auto`` above the memory budget):
where a dataset is decoded to and how its splits end up as files (clfkit.data.disk_storage).

- A cached dataset (folders) decodes straight into the temp folder of the cache entry being
  written; once the entry is renamed into place, the splits are reopened from it.
- A dataset the cache does not keep (procedural data, ``CLFKIT_CACHE=0``) is written to a
  private folder beside the cache (or in the system temp dir), deleted when the process ends.
- A dataset that can only load into memory (CIFAR, CSV, plugins) is written out after its load
  and dropped from memory: its peak stays, but the run holds only batches afterwards.
"""

from __future__ import annotations

import fcntl
import os
import time
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from clfkit.data import disk_storage as storage
from clfkit.data.splits import ImageSet, Splits

SPLITS = ("train", "val", "test")


def _nbytes(splits: Splits) -> int:
    return sum(int(np.prod(tuple(s.images.shape))) for s in _sets(splits))


def reopen(splits: Splits, folder: Path, storage_mode: str) -> Splits:
    """``splits`` with each split's images read from ``folder/<split>.images.npy`` when the set
    goes to disk (memory splits not written there yet are written first), or in memory when it
    does not (a loader that decoded to disk on an estimate: three channels, then grayscale)."""
    on_disk = storage.resolve(storage_mode, _nbytes(splits)) == "disk"
    for name in SPLITS:
        s: Optional[ImageSet] = getattr(splits, name)
        if s is None:
            continue
        file = folder / f"{name}.images.npy"
        if on_disk and not storage.is_disk(s.images) and not file.exists():
            np.save(file, s.images.cpu().numpy(), allow_pickle=False)
        if on_disk or storage.is_disk(s.images):
            images = storage.DiskImages(file)
            setattr(splits, name, ImageSet(images if on_disk else images[:], s.labels, s.paths))
    return splits


STALE_AFTER_S = 60  # a temp folder younger than this may be one another process has just made


def locked_temp_folder(parent: Path, prefix: str, suffix: str = "") -> Path:
    """A new temp folder in ``parent``, exclusively locked while this process lives: a run
    killed mid-write (kill -9, a power cut) leaves it unlocked, and :func:`remove_stale` deletes
    it then (it may hold as many bytes as the decoded data)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _LOCKS[folder] = fd  # released when the process exits, whatever the way
    return folder


_LOCKS: dict[Path, int] = {}


def release(folder: Path) -> None:
    """Drop the lock of a temp folder this process made (once it is renamed or deleted)."""
    fd = _LOCKS.pop(folder, None)
    if fd is not None:
        os.close(fd)


def remove_stale(parent: Path, pattern: str) -> None:
    """Delete the temp folders in ``parent`` matching ``pattern`` that no live process holds."""
    try:
        found = [p for p in parent.glob(pattern) if p.is_dir() and p not in _LOCKS]
    except OSError:
        return
    for folder in found:
        try:
            if time.time() - folder.stat().st_mtime < STALE_AFTER_S:
                continue
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by its maker while it lives
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def private_folder(parent: Optional[Path]) -> Path:
    """A folder for one load's disk splits (see :func:`uncached` for when it goes)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale(parent, ".clfkit-disk-*")
        return locked_temp_folder(parent, ".clfkit-disk-")
    except (OSError, AttributeError):  # no cache location, or not writable
        return Path(tempfile.mkdtemp(prefix="clfkit-disk-"))


class _Lease:
    """Held by every disk split read from a private folder (``DiskImages.keeper``): the folder
    is deleted when the last of them is garbage (a sweep's next run must not find the disk
    full of its predecessors' splits), or when the process exits."""

    def __init__(self, folder: Path):
        weakref.finalize(self, _remove, folder, os.getpid())


def _leased(splits: Splits, folder: Path) -> Splits:
    lease = _Lease(folder)  # no split on disk: dropped on return, and the folder with it
    for s in _sets(splits):
        if storage.is_disk(s.images) and Path(s.images.path).parent == folder:
            s.images.keeper = lease
    return splits


def uncached(
    load: Callable[[], Splits], storage_mode: str, parent: Optional[Path], log: Callable[[str], None]
) -> Splits:
    """A dataset the cache does not keep, with its splits in a private folder."""
    target = storage.Target(storage_mode, lambda: private_folder(parent))
    try:
        with storage.decode_target(target):
            splits = load()
        if target.made is None and storage.resolve(storage_mode, _nbytes(splits)) == "memory":
            return splits  # auto, under the budget: nothing written
        return _leased(reopen(splits, target.folder, storage_mode), target.folder)
    except OSError as e:  # a full disk: the run may still fit in memory
        _remove(target.made)
        log(
            f"could not write the decoded images to {target.made or 'a private folder'}: {e.strerror or e}; "
            f"loading them into memory"
        )
        return load()
    except BaseException:  # bad data, Ctrl-C: its half-written files must not wait for the process to end
        _remove(target.made)
        raise


def _remove(folder: Optional[Path], owner: Optional[int] = None) -> None:
    if folder is not None and owner in (None, os.getpid()):  # never from a forked child
        shutil.rmtree(folder, ignore_errors=True)
        release(folder)


def cached_miss(
    load: Callable[[], Splits],
    storage_mode: str,
    *,
    base: Path,
    group: str,
    log: Callable[[str], None],
    store: Callable[[Splits, Path], Optional[Path]],
    fingerprint_of: Callable[[], str],
) -> Splits:
    """Decode into a new cache entry's temp folder, store the entry, reopen from it."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = locked_temp_folder(base, f".{group}-decoding.", ".tmp")
    except OSError as e:
        log(f"could not write the data cache {base}: {unwritable(base, e)}; the run goes on without it")
        return uncached(load, storage_mode, None, log)
    splits = None
    try:
        with storage.decode_target(storage.Target(storage_mode, lambda: tmp)):
            splits = load()
        if splits.fingerprint is None:
            splits.fingerprint = fingerprint_of()
        path = store(splits, tmp)  # None (and one warning) when it could not be written
    except OSError as e:  # decoding ran out of space
        path, splits = None, None
        log(f"could not decode to the data cache {tmp}: {e.strerror or e}; loading the images into memory")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # renamed away when the entry was stored
        release(tmp)
    if path is not None:
        return reopen(splits, path, storage_mode)
    if splits is not None and not any(storage.is_disk(s.images) for s in _sets(splits)):
        return splits  # in memory already: the entry alone is lost
    return load()  # its files went with the temp folder


def unwritable(path: Path, e: OSError) -> str:
    """Why the cache cannot be written at ``path``: a file where a folder should be (mkdir then
    says "File exists", which misleads), else the system's reason."""
    for p in (path, *path.parents):
        if p.is_dir():
            break
        if p.exists():
            return f"{p} is a file, not a folder (CLFKIT_CACHE_DIR must name a folder)"
    return e.strerror or str(e)


def _sets(splits: Splits) -> list[ImageSet]:
    return [s for s in (splits.train, splits.val, splits.test) if s is not None]
