"""A disk cache of decoded datasets: a folder is decoded once, and every later run, sweep
point or DDP rank with the same decode settings loads the uint8 tensors instead.

An entry is keyed by the dataset's fingerprint (for a folder: every file's relative path,
size and mtime) and the decode settings (size, channels, resize, on_error), plus the cache
format and the PIL version (a new PIL may resize differently). Changing, adding or removing
a file changes the key, so a stale entry is never read; older entries for the same root and
settings are deleted when the new one is written.

Layout, no pickle anywhere (arrays load with ``allow_pickle=False``)::

    <cache dir>/<key>/
      index.json                  class names, paths, skipped files, description, shapes
      train.images.npy            uint8 (N, C, H, W)
      train.labels.npy            int64 (N,)      (and val.*, test.* when present)

An entry is written into a temporary folder beside it and renamed into place, so a crash or
a concurrent writer never leaves a half entry that a reader would take.

The cache dir is ``$CLFKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/clfkit``, else
``~/.cache/clfkit``; ``CLFKIT_CACHE=0`` turns the cache off. It is a property of the machine,
not of the recipe, so recipes stay portable.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from clfkit.data import ImageSet, Splits

FORMAT = 2  # 2: channels: 1 decodes colour files to luma (1 kept their red channel)
SPLITS = ("train", "val", "test")


def cache_dir() -> Optional[Path]:
    """Where entries live, or None when caching is turned off (``CLFKIT_CACHE=0``)."""
    if os.environ.get("CLFKIT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get("CLFKIT_CACHE_DIR"):
        return Path(os.environ["CLFKIT_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clfkit"


def folder_fingerprint(root: str | os.PathLike) -> str:
    """A hash of every file under ``root`` (relative path, size, mtime in ns), in sorted order.
    Stat only: no file is read, so this costs a directory walk (~1 s per 100k files)."""
    root = Path(root).expanduser().resolve()
    h = hashlib.sha256(str(root).encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
            st = os.stat(os.path.join(dirpath, f))
            h.update(f"{rel}/{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def entry_key(source: str, fingerprint: str, settings: dict[str, Any]) -> str:
    import PIL

    blob = json.dumps({"format": FORMAT, "source": source, "fingerprint": fingerprint,
                       "settings": settings, "pil": PIL.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- read / write
def _save_array(folder: Path, name: str, arr: np.ndarray) -> None:
    with open(folder / name, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def write_entry(path: Path, splits: Splits, meta: dict[str, Any]) -> None:
    """Write ``splits`` as the entry ``path`` atomically (temp folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        index: dict[str, Any] = {"format": FORMAT, **meta, "class_names": splits.class_names,
                                 "description": splits.description,
                                 "skipped": [list(s) for s in splits.skipped], "splits": {}}
        for name in SPLITS:
            s: Optional[ImageSet] = getattr(splits, name)
            if s is None:
                continue
            _save_array(tmp, f"{name}.images.npy", s.images.cpu().numpy())
            if s.labels is not None:
                _save_array(tmp, f"{name}.labels.npy", s.labels.cpu().numpy())
            index["splits"][name] = {"n": len(s), "shape": list(s.images.shape),
                                     "labelled": s.labels is not None, "paths": s.paths}
        with open(tmp / "index.json", "w", encoding="utf-8") as f:  # written last: marks complete
            json.dump(index, f)
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


def read_entry(path: Path) -> Optional[Splits]:
    """The cached Splits, or None when the entry is missing or unreadable (then re-decode)."""
    try:
        index = json.loads((path / "index.json").read_text(encoding="utf-8"))
        if index.get("format") != FORMAT:
            return None
        sets = {}
        for name, info in index["splits"].items():
            images = np.load(path / f"{name}.images.npy", allow_pickle=False)
            labels = np.load(path / f"{name}.labels.npy", allow_pickle=False) if info["labelled"] else None
            if list(images.shape) != info["shape"] or images.dtype != np.uint8:
                return None
            sets[name] = ImageSet(torch.from_numpy(images),
                                  torch.from_numpy(labels) if labels is not None else None, info["paths"])
        return Splits(train=sets["train"], class_names=index["class_names"], val=sets.get("val"),
                      test=sets.get("test"), skipped=[tuple(s) for s in index["skipped"]],
                      description=index["description"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune_siblings(base: Path, keep: str, meta: dict[str, Any]) -> None:
    """Delete entries for the same source and settings whose fingerprint is out of date."""
    for entry in base.iterdir():
        if entry.name == keep or entry.name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError):
            index = json.loads((entry / "index.json").read_text(encoding="utf-8"))
            if index.get("source") == meta["source"] and index.get("settings") == meta["settings"]:
                shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- the entry point
FINGERPRINTS: dict[str, Callable[..., str]] = {
    # dataset name -> fingerprint of its args. Only datasets read from files are worth caching.
    "folder": lambda root, **_: folder_fingerprint(root),
}


def cached(name: str, args: dict[str, Any], settings: dict[str, Any], load: Callable[[], Splits],
           log: Callable[[str], None] = lambda s: None) -> Splits:
    """``load()`` through the cache: the cached Splits when the dataset and settings are
    unchanged, else ``load()`` once and store its result. Datasets without a fingerprint
    (procedural ones) and a turned-off cache go straight to ``load()``."""
    base = cache_dir()
    fingerprint_of = FINGERPRINTS.get(name)
    if base is None or fingerprint_of is None:
        return load()
    try:
        fingerprint = fingerprint_of(**args)
    except OSError:  # let the dataset report a missing root in its own words
        return load()
    source = f"{name}:{Path(str(args.get('root', ''))).expanduser().resolve()}" if "root" in args else name
    meta = {"source": source, "settings": settings, "fingerprint": fingerprint}
    key = entry_key(source, fingerprint, settings)
    path = base / key
    t0 = time.perf_counter()
    hit = read_entry(path) if path.is_dir() else None
    if hit is not None:
        hit.description += f" (decoded images from cache {path}, {time.perf_counter() - t0:.1f}s)"
        return hit
    splits = load()
    try:
        if path.exists():  # unreadable (interrupted copy, older format): replace it
            shutil.rmtree(path)
        write_entry(path, splits, meta)
        _prune_siblings(base, key, meta)
    except OSError as e:  # a read-only or full cache dir must not stop training
        log(f"could not write the data cache {path}: {e.strerror or e}")
    return splits
