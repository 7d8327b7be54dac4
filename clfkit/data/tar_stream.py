"""The members of a plain tar stream, read in a few Python operations each: what a streamed epoch
needs from the shards ``clfkit data pack`` writes (ustar headers, regular files).

Why not tarfile (through webdataset's tar iteration): its per-member work (header objects,
checksum both ways, PAX/GNU dispatch, the file-object wrapper) cost about 100 us per sample,
as much as decoding a 32 px PNG and five times a raw-pixel sample. Anything this reader does
not handle (compression, PAX or GNU long-name headers, base-256 sizes, a bad checksum, links
to other members) raises :class:`Unsupported` before that member is yielded, and the caller
reads the shard again through webdataset from the sample it had reached: the same samples,
the same errors, only slower.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_SKIPPED = (b"5",)  # directories: no data, no sample
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: such members are not samples
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


class Unsupported(Exception):
    """A tar feature this reader leaves to tarfile."""


def _header(block: bytes) -> tuple[str, int, bytes]:
    """(name, size, type flag) of a ustar header block; Unsupported for anything else."""
    if block[257:262] != b"ustar":
        raise Unsupported("not a ustar header")
    stored = block[148:156].split(b"\0", 1)[0].strip()
    if not stored or int(stored, 8) != sum(block) - sum(block[148:156]) + 256:
        raise Unsupported("header checksum")
    kind = block[156:157]
    if block[124] & 0x80 or (kind not in _REGULAR and kind not in _SKIPPED):
        raise Unsupported(f"member type {kind!r} or a base-256 size")
    name = block[:100].split(b"\0", 1)[0]
    if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX: a prefix holds the leading folders
        name = block[345:500].split(b"\0", 1)[0] + b"/" + name
    return (
        name.decode("utf-8", "surrogateescape"),
        int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8),
        kind,
    )


def _members(stream: BinaryIO) -> Iterator[tuple[str, int, bytes]]:
    """(name, size, type flag) of each member of tar ``stream``, in order, the stream left at the
    member's data (the caller reads or skips ``size`` bytes before the next step). EOFError for
    a stream that ends before the end-of-archive block; Unsupported (see the module doc)."""
    first = True
    while True:
        block = stream.read(BLOCK)
        if first and (not block or block[:2] == b"\x1f\x8b"):  # empty, or gzip: tarfile's own errors
            raise Unsupported("empty or compressed")
        first = False
        if block == bytes(BLOCK):  # the end-of-archive marker every tar writer closes with (two
            after = stream.read(BLOCK)  # zero blocks): a lone one before more members is damage
            if after.strip(b"\0"):
                raise ValueError(
                    "a zeroed tar header block before more members (a damaged shard: tarfile would end "
                    "the archive there without a word)"
                )
            return
        if len(block) < BLOCK:  # seeking over a member past the end reads nothing here, too
            raise EOFError("the tar stream ends before its end-of-archive marker (truncated)")
        yield _header(block)


def _is_sample_file(name: str, kind: bytes) -> bool:
    return (
        kind in _REGULAR
        and not ("/" not in name and name.startswith("__") and name.endswith("__"))
        and not _META.match(name)
    )


def _skip(stream: BinaryIO, n: int, seekable: bool, name: str) -> None:
    if seekable:
        stream.seek(n, 1)
    elif n and len(stream.read(n)) < n:
        raise EOFError(f"the tar stream ends inside {name} (truncated)")


def samples(stream: BinaryIO, skip: int = 0) -> Iterator[dict[str, bytes | str]]:
    """Members grouped into samples by key (``00042.png`` + ``00042.cls``), as webdataset's
    group_by_keys does: {"__key__": key, extension (lower case): bytes, ...}, from sample
    ``skip`` on: the samples before it are counted from their headers, their data seeked over
    (a stream that cannot seek reads it)."""
    seekable = getattr(stream, "seekable", lambda: False)()  # curl's pipe for URLs has no such method
    current: dict | None = None
    index = -1
    for name, size, kind in _members(stream):
        m = _KEY.match(name) if _is_sample_file(name, kind) else None
        if m and (current is None or m.group(1) != current["__key__"]):
            if current is not None and index >= skip:
                yield current
            current, index = {"__key__": m.group(1)}, index + 1
        if index < skip or not m:
            _skip(stream, size + (-size % BLOCK), seekable, name)
            continue
        data = stream.read(size)
        if len(data) < size:
            raise EOFError(f"the tar stream ends inside {name} (truncated)")
        _skip(stream, -size % BLOCK, seekable, name)
        ext = m.group(2).lower()
        if ext in current:
            raise ValueError(f"{name}: duplicate file name in tar file {ext} {list(current)}")
        current[ext] = data
    if current is not None and index >= skip:
        yield current
