"""WebDataset tar shards (``data.source: {name: webdataset, ...}``) read through the
``webdataset`` library: local paths or http(s) URLs, brace patterns
(``shard-{000000..000099}.tar``), samples grouped by key (``00042.png`` + ``00042.cls``).

What this module knows is the shards themselves: which there are, how many samples each holds
(the manifest ``clfkit data pack`` writes beside them, else one counting pass), the class names
(the recipe, the manifest, or a ``classes.json`` / ``classes.txt`` beside the shards), and how to
read a run of samples from one shard with a retried, counted read: a dropped connection is
re-opened and the samples already read are skipped; a shard that still ends early is an error,
never a short epoch. How an epoch streams them (ranks, workers, shuffling, batches) is
clfkit.train.engine.stream_batches.
"""

from __future__ import annotations

import glob
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clfkit.data import tar_stream
from clfkit.data.blobs import IMAGE_EXTENSIONS
from clfkit.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "clfkit-shards/1"
CLASS_FILES = ("classes.json", "classes.txt")
RETRIES = 3  # re-opens of a URL shard whose read failed, before the error
RETRY_DELAY_S = 1.0
SAMPLE_EXTENSIONS = (*IMAGE_EXTENSIONS, "npy")  # .npy: raw pixels (clfkit.data.raw_pixels)


@dataclass
class Sample:
    """One raw sample: its key, the image's bytes (None if it has none) and its label text."""

    key: str
    image: bytes | None
    label: str | None
    hint: str = ""  # why a sample without a label has none, when its member names say


@dataclass
class Shards:
    """A split's shards: their URLs or paths, in the order given (brace patterns expanded), and
    the samples each holds."""

    urls: list[str]
    counts: list[int]
    image_key: str | None = None
    label_key: str = "cls"
    shard_classes: list[list[int]] | None = None  # per shard, its images per class (the manifest's)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(self.counts)

    @property
    def per_class(self) -> list[int] | None:
        """Images per class over all the shards, when the manifest gives them."""
        return None if self.shard_classes is None else [sum(c) for c in zip(*self.shard_classes)]

    def subset(self, first: int, stop: int) -> Shards:
        """Shards ``first``..``stop`` (whole shards)."""
        part = None if self.shard_classes is None else self.shard_classes[first:stop]
        return Shards(self.urls[first:stop], self.counts[first:stop], self.image_key, self.label_key, part)


def wds():
    """The webdataset library, or a clear error naming the extra that installs it."""
    try:
        import webdataset
    except ImportError as e:
        raise DataError(
            f"WebDataset shards need the `webdataset` package ({e}); pip install 'clfkit[data]'"
        ) from None
    return webdataset


def is_url(text: str) -> bool:
    return urlparse(text).scheme in ("http", "https")


def expand(pattern: str | list[str]) -> list[str]:
    """A brace pattern (or a list of them) -> shard URLs/paths; local paths made absolute, and
    a local glob (``train-*.tar``) expanded in sorted order: users write both."""
    expand_urls = wds().shardlists.expand_urls
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    urls = [u for p in patterns if str(p).strip() for u in expand_urls(str(p).strip())]
    return [found for u in urls for found in ([u] if is_url(u) else _local_paths(u))]


def _local_paths(path: str) -> list[str]:
    """``path`` made absolute; a glob's matches, sorted (one matching nothing is an error: an
    empty shard list would otherwise read as a missing file or an empty split)."""
    if path.startswith("file://"):  # a file URL names a local path
        path = path[len("file://") :]
    full = Path(path).expanduser().absolute()
    if full.exists() or not glob.has_magic(str(full)):
        return [str(full)]
    matches = sorted(p for p in glob.glob(str(full)) if Path(p).is_file())
    if not matches:
        raise DataError(
            f"shard pattern {path!r} matches no file (looked for {full}); give existing shards "
            f"as a path, a glob or a brace pattern like train-{{000000..000009}}.tar"
        )
    return matches


def beside(url: str, name: str) -> str:
    """The URL/path of file ``name`` in the folder of shard ``url``."""
    return url.rsplit("/", 1)[0] + "/" + name if is_url(url) else str(Path(url).parent / name)


def read_small(url: str) -> bytes | None:
    """A small file beside the shards (manifest, class names), None when there is none."""
    if not is_url(url):
        return Path(url).read_bytes() if Path(url).is_file() else None
    try:
        with wds().gopen(url, "rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - curl's exit status for a missing file (404): there is none
        return None


def read_manifest(first_shard: str) -> dict[str, Any] | None:
    """The manifest beside the shards (written by ``clfkit data pack``), or None."""
    where = beside(first_shard, MANIFEST)
    raw = read_small(where)
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise DataError(
            f"{where} is not valid JSON ({e}); remove it or write it again with clfkit data pack"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DataError(f"{where} is not a clfkit shard manifest (format {MANIFEST_FORMAT!r})")
    for entry in manifest.get("shards", []):
        _check_entry(entry, where)
    return {**manifest, "__where__": where}


def _check_entry(entry: Any, where: str) -> None:
    """One shard's entry of a manifest: a name, a count, optional per_class counts and size."""

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        problem = "is not an object with a name"
    elif not whole(entry.get("count")):
        problem = "has no count (a whole number)"
    elif "per_class" in entry and not (
        isinstance(entry["per_class"], list) and all(map(whole, entry["per_class"]))
    ):
        problem = "has per_class that is not a list of whole numbers"
    elif "bytes" in entry and not whole(entry["bytes"]):
        problem = "has bytes that is not a whole number"
    else:
        return
    raise DataError(
        f"{where}: the shard entry {json.dumps(entry)[:120]} {problem}; write it again with clfkit "
        f"data pack, or delete it to have the run count the samples"
    )


def class_names_beside(first_shard: str) -> list[str] | None:
    """Class names from classes.json (a list) or classes.txt (one a line) beside the shards."""
    for name in CLASS_FILES:
        where = beside(first_shard, name)
        raw = read_small(where)
        if raw is None:
            continue
        try:
            text = raw.decode("utf-8-sig")
            names = (
                json.loads(text)
                if name.endswith(".json")
                else [ln.strip() for ln in text.splitlines() if ln.strip()]
            )
        except (UnicodeDecodeError, ValueError) as e:
            raise DataError(f"cannot read class names from {where} ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{where} must hold a list of class names (strings)")
        return names
    return None


# --------------------------------------------------------------------------- reading samples
def _open(url: str):
    if not is_url(url):
        if Path(url).is_dir():
            raise DataError(f"shard {url} is a folder: name its shards, e.g. {Path(url) / 'train-*.tar'}")
        if not Path(url).is_file():
            raise DataError(f"shard {url} does not exist")
        return open(url, "rb", buffering=1 << 20)
    return wds().gopen(url, "rb")


def _sample(s: dict[str, Any], image_key: str | None, label_key: str) -> Sample:
    image = s.get(image_key) if image_key else next((s[e] for e in SAMPLE_EXTENSIONS if e in s), None)
    label = s.get(label_key, s.get("label"))
    if label is None:
        dotted = next((e for e in s if e.endswith(f".{label_key}")), None)
        hint = (
            f" (it has a member {s['__key__']}.{dotted}: a sample's key ends at the first '.' of a "
            f"file name, so name files like img_0001.{label_key}, not img.0001.{label_key})"
            if dotted
            else ""
        )
        return Sample(s["__key__"], image, None, hint)
    return Sample(s["__key__"], image, label.decode("utf-8", "replace").strip())


def _samples(url: str, image_key: str | None, label_key: str, skip: int, fast: bool) -> Iterator[Sample]:
    """The samples of one shard in file order from sample ``skip`` on: through
    clfkit.data.tar_stream (``fast``: the skipped ones not even read), else webdataset's tar
    iteration and grouping (the skipped ones read and dropped)."""
    stream = _open(url)
    try:
        if fast:
            grouped = tar_stream.samples(stream, skip)
        else:
            tariterators = wds().tariterators
            grouped = tariterators.group_by_keys(
                tariterators.tar_file_expander([{"url": url, "stream": stream}], eof_value={})
            )
            grouped = itertools.islice(grouped, skip, None)
        for s in grouped:
            yield _sample(s, image_key, label_key)
    finally:
        stream.close()


def read_shard(
    url: str,
    start: int,
    stop: int | None,
    *,
    image_key: str | None = None,
    label_key: str = "cls",
    expected: int | None = None,
) -> Iterator[Sample]:
    """Samples ``start``..``stop`` of shard ``url`` (``stop`` None: to its end). A failed read of
    a URL is retried (RETRIES re-opens, skipping what was read); a shard ending before ``stop``
    (or with fewer than ``expected`` samples), holding more than ``expected`` when read up to it,
    or with a damaged header is a DataError: never a silently short or long epoch."""
    done, attempt, fast, fallback = start, 0, True, ""
    while True:
        try:
            for i, sample in enumerate(_samples(url, image_key, label_key, done, fast), start=done):
                if stop is not None and i >= stop:
                    if stop == expected:
                        raise DataError(_longer(url, expected, sample.key))
                    return
                done += 1
                yield sample
            break
        except DataError:
            raise
        except tar_stream.Unsupported as e:  # read on from sample `done` through webdataset
            fast, fallback = False, str(e)
        except Exception as e:  # noqa: BLE001 - tarfile, curl's pipe, sockets: many types
            attempt += 1
            if not is_url(url) or attempt > RETRIES or isinstance(e, ValueError):  # the data's, not the net's
                raise DataError(_failed_read(url, done, e, fallback)) from None
            time.sleep(RETRY_DELAY_S * attempt)
    if "checksum" in fallback:  # tarfile takes a bad header past the first for the archive's end
        raise DataError(
            f"shard {url}: a damaged tar header (bad checksum) follows its first {done} samples, so the "
            f"rest cannot be read; pack it again"
        )
    want = stop if stop is not None else expected
    if want is not None and done < want:
        raise DataError(
            f"shard {url} ended after {done} samples, but {want} were expected (from the manifest or "
            f"the count at the run's start): truncated or replaced while in use?"
        )


def _longer(url: str, expected: int, key: str) -> str:
    return (
        f"shard {url} holds more than the {expected} samples of its manifest.json (or of the count at "
        f"the run's start): {key!r} follows them, so it changed after that. Pack the data again, or "
        f"delete manifest.json to have the run count the samples at its start"
    )


def _failed_read(url: str, done: int, e: Exception, fallback: str) -> str:
    """The error line of a shard read that failed after ``done`` samples, with its likely cause."""
    cause = str(e.args[0] if e.args else e).splitlines()[0][:200] if str(e) else ""
    if "duplicate file name" in cause:
        hint = "; two members of one sample have the same name: a key written twice in a row?"
    elif "checksum" in fallback:
        hint = "; it has a damaged tar header (bad checksum): pack it again"
    elif is_url(url):
        hint = f"; {RETRIES} retries failed too"
    elif "invalid header" in cause and done == 0:
        hint = "; not a tar file?"
    elif "truncated" not in cause:
        hint = "; truncated?"
    else:
        hint = ""
    return f"shard {url}: read failed after {done} samples ({type(e).__name__}: {cause}){hint}"


def count_samples(url: str, image_key: str | None = None, label_key: str = "cls") -> int:
    """Samples in a shard (read once, nothing decoded): for shards without a manifest."""
    return sum(1 for _ in read_shard(url, 0, None, image_key=image_key, label_key=label_key))
