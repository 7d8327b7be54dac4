"""Runs of raw-pixel samples read as blocks (issue 25): the vectorised fast path of a streamed epoch.

In a shard ``clfkit data pack --raw auto`` wrote, every sample of small images has the same
member layout and byte size ([ustar header][.npy pixels, padded][ustar header][label, padded]):
a constant stride. :func:`runs` reads a run of such samples from a LOCAL shard a few MB at a
time, views the bytes as (rows, stride) and checks in numpy, for every row, what the
per-sample reader (clfkit.data.tar_stream) would parse there: ustar magic, header checksums, the
first sample's member sizes, type flags and names (only the key's digits may differ, the
same in both members, and never the same as the row before), the row's end (the next row's
header starts another sample, or the archive ends), and, for the run's last row, that the
per-sample reader would also get past the sample after it. The first row that fails ends the
run: the caller reads on per sample from there (the same samples, the same errors), so this
path never yields a wrong pixel, only the same samples sooner. The rows before ``first`` are
checked too (they place the run); a process remembers how far a shard file checked good, by
inode, size and modification time, so its next run in that file starts where it starts.

A row comes out as ``(pixels, class, key)``, its .npy pixels as bytes already in the shape
training wants, when its label is valid and its .npy header is the first sample's, of shape
(image_size, channels); any other row comes out as the :class:`clfkit.data.shards.Sample` the
per-sample reader would give, decoded (or refused) by the usual rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clfkit.data import image_files, raw_pixels, tar_stream
from clfkit.data.shards import SAMPLE_EXTENSIONS, Sample
from clfkit.data.streamed import Decoding

BLOCK = tar_stream.BLOCK
CHUNK_BYTES = 4 << 20  # read per step: the run is never held whole
LABEL_BYTES = 64  # labels up to this long are parsed per distinct text; longer ones go the per-sample way
_OCTAL = 8 ** np.arange(10, -1, -1, dtype=np.int64)
# per shard file as it is now (inode, size, mtime, ctime): rows from 0 known good
_CHECKED: dict[tuple, int] = {}


@dataclass(frozen=True)
class Layout:
    """What every row of a run shares with the shard's first sample."""

    stride: int  # bytes per sample
    headers: tuple[int, int]  # offsets of the two member headers in a row
    first: tuple[np.ndarray, np.ndarray]  # the first sample's two headers
    checks: tuple[tuple, tuple]  # per header: its words, the words' fixed bytes, free columns, checksum base
    digits: np.ndarray  # name columns that may vary (the key's digits), in both headers
    label: int  # which header (0, 1) is the label's
    label_at: int  # offset of the label's bytes in a row
    image_at: int  # offset of the .npy bytes in a row
    image_size: int
    key_prefix: str  # key text before the name field's (the ustar prefix)
    key_width: int  # bytes of the key in the name field
    npy_header: bytes | None  # the first sample's .npy header, when its shape is what training wants
    pixels: int  # bytes of pixels after that header


def _padded(size: int) -> int:
    return size + (-size % BLOCK)


def layout(path: str, *, image_key: str | None, label_key: str, decoding: Decoding) -> Layout | None:
    """The layout of the first sample of shard ``path``, or None when it is not one .npy member and
    one ``label_key`` member in plain ustar headers (such shards are read per sample)."""
    if image_key not in (None, "npy") or label_key in SAMPLE_EXTENSIONS or not Path(path).is_file():
        return None
    members, at = [], 0
    with open(path, "rb") as f:
        for _ in range(2):
            f.seek(at)
            block = f.read(BLOCK)
            try:
                name, size, kind = tar_stream._header(block) if len(block) == BLOCK else ("", 0, b"")
            except tar_stream.Unsupported:
                return None
            m = tar_stream._KEY.match(name) if tar_stream._is_sample_file(name, kind) else None
            if m is None or block[148:156][6:] != b"\0 ":  # tarfile's checksum field: 6 digits, NUL, space
                return None
            members.append((at, np.frombuffer(block, np.uint8), m.group(1), m.group(2).lower(), size))
            at += BLOCK + _padded(size)
        (a0, h0, k0, e0, _), (a1, h1, k1, e1, _) = members
        if k0 != k1 or {e0, e1} != {"npy", label_key} or bytes(h0[257:500]) != bytes(h1[257:500]):
            return None
        image = 0 if e0 == "npy" else 1
        image_at, image_size = members[image][0] + BLOCK, members[image][4]
        f.seek(image_at)
        npy = f.read(image_size)
    label_size = members[1 - image][4]
    if len(npy) < image_size or not 0 < label_size <= LABEL_BYTES or h0[135] or h1[135]:
        return None
    name_field = bytes(h0[:100]).split(b"\0", 1)[0]
    key_field = name_field[: len(name_field) - len(e0) - 1]
    digits = np.array([i for i, c in enumerate(key_field) if 48 <= c <= 57], dtype=np.int64)
    free = [np.concatenate([digits, np.arange(148, 154)])] * 2
    free[1 - image] = np.concatenate([free[1 - image], np.arange(124, 135)])  # the label's size may vary
    checks = tuple(_checks(h, f) for h, f in zip((h0, h1), free))
    npy_header, pixels = _pixels_header(npy, decoding)
    return Layout(
        stride=at,
        headers=(a0, a1),
        first=(h0, h1),
        checks=checks,
        digits=digits,
        label=1 - image,
        label_at=members[1 - image][0] + BLOCK,
        image_at=image_at,
        image_size=image_size,
        key_prefix=k0[: len(k0) - len(key_field.decode("utf-8", "surrogateescape"))],
        key_width=len(key_field),
        npy_header=npy_header,
        pixels=pixels,
    )


def _checks(first: np.ndarray, free: np.ndarray) -> tuple:
    """How rows are checked against header ``first`` whose columns ``free`` may differ (and 148:154,
    the checksum): its 64 words, a mask of the fixed bytes in each, the free columns outside the
    checksum field, and the checksum of the fixed bytes (the field counted as spaces)."""
    fixed = ~np.isin(np.arange(BLOCK), free)
    summed = fixed & ~np.isin(np.arange(BLOCK), np.arange(148, 156))
    free_sum = np.setdiff1d(free, np.arange(148, 156))
    mask = np.where(fixed, 0xFF, 0).astype(np.uint8)
    return first.view(np.uint64), mask.view(np.uint64), free_sum, int(first[summed].sum()) + 256


def _pixels_header(npy: bytes, decoding: Decoding) -> tuple[bytes | None, int]:
    """(.npy header, pixel bytes) when ``npy`` holds exactly the (size, channels) pixels training wants."""
    try:
        shape, nbytes, start = raw_pixels._shape(npy)
    except image_files.DecodeError:
        return None, 0
    c = 1 if len(shape) == 2 else shape[2]
    ok = tuple(shape[:2]) == tuple(decoding.size) and c == decoding.channels and len(npy) - start == nbytes
    return (npy[:start], nbytes) if ok else (None, 0)


def _headers_ok(h: np.ndarray, which: int, lay: Layout) -> np.ndarray:
    """Per row of headers ``h`` (rows, 512): the first sample's header but for the key's digits
    (and the label's size), with a valid checksum. Compared 8 bytes at a time; the checksum
    from the bytes that may differ (the others are the first header's)."""
    first, fixed, free, base = lay.checks[which]
    ok = ~((h.view(np.uint64) ^ first) & fixed).any(1)
    d = h[:, lay.digits]
    ok &= ((d >= 48) & (d <= 57)).all(1)
    c = h[:, 148:154].astype(np.int64) - 48
    ok &= ((c >= 0) & (c <= 7)).all(1)
    ok &= c @ _OCTAL[5:] == base + h[:, free].sum(1, dtype=np.int64)
    return ok


def _label_sizes(h: np.ndarray) -> np.ndarray:
    """The size field of label headers ``h``: 11 octal digits (-1 where it is not)."""
    c = h[:, 124:135].astype(np.int64) - 48
    return np.where(((c >= 0) & (c <= 7)).all(1), c @ _OCTAL, -1)


def _good_rows(data: bytes, n: int, lay: Layout, prev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the first ``n`` in ``data`` (followed by the next row's header, if the file
    has one): does the per-sample reader parse it as one sample of this layout? And the rows'
    key digits."""
    fit = min(n, len(data) // lay.stride)
    tail = data[fit * lay.stride : fit * lay.stride + BLOCK].ljust(BLOCK, b"\1")  # short: neither end
    rows = np.frombuffer(data, np.uint8, count=fit * lay.stride).reshape(fit, lay.stride)
    second = rows[:, lay.headers[1] : lay.headers[1] + BLOCK]
    heads = np.concatenate(
        [rows[:, lay.headers[0] : lay.headers[0] + BLOCK], np.frombuffer(tail, np.uint8)[None]]
    )
    starts = _headers_ok(heads, 0, lay)  # a header that starts a sample: each row's first, and the tail
    if lay.label == 0:  # a label's header: its size must parse too
        starts &= _label_sizes(heads) >= 0
    keys = heads[:, lay.digits]
    differ = (keys[1:] != keys[:-1]).any(1)  # row i's key against the next header's
    ok = starts[:-1] & _headers_ok(second, 1, lay) & (keys[:-1] == second[:, lay.digits]).all(1)
    size = _label_sizes(heads[:-1] if lay.label == 0 else second)
    ok &= (size > 0) & (size <= LABEL_BYTES)
    ok[1:] &= differ[:-1]
    if prev is not None and fit:
        ok[0] &= bool((keys[0] != prev).any())
    # a row ends where another sample starts (another key) or the archive does (a zero block)
    ends = ~heads[1:].view(np.uint64).any(1) | (starts[1:] & differ)
    return ok & ends, keys[:-1]


def _leading(ok: np.ndarray) -> int:
    return len(ok) if ok.all() else int(np.argmin(ok))


def _ends_cleanly(f, lay: Layout, stop: int, expected: int | None) -> bool:
    """Would the per-sample reader, having read sample ``stop - 1``, get past sample ``stop``
    (the archive's end, or a whole sample of this layout)? It reads that far before it stops.
    A sample past the shard's ``expected`` count is its error to raise: False."""
    if _read(f, stop * lay.stride, BLOCK) == bytes(BLOCK):
        return True
    if stop == expected:
        return False
    ok, _ = _good_rows(_read(f, (stop - 1) * lay.stride, 2 * lay.stride + BLOCK), 2, lay, None)
    return len(ok) == 2 and bool(ok[1])


def _read(f, at: int, n: int) -> bytes:
    """``n`` bytes of file ``f`` from ``at``, fewer only at its end."""
    f.seek(at)
    parts = [f.read(n)]
    while parts[-1] and (got := sum(map(len, parts))) < n:
        parts.append(f.read(n - got))
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _items(data: bytes, n: int, lay: Layout, decoding: Decoding) -> list:
    """The first ``n`` rows of ``data`` (checked) as (pixels, class, key) or Sample."""
    stride = lay.stride
    rows = np.frombuffer(data, np.uint8, count=n * stride).reshape(n, stride)
    h0, width = lay.headers[0], lay.key_width
    names = np.ascontiguousarray(rows[:, h0 : h0 + width]).view(f"S{width}").ravel().tolist()
    keys = b"\0".join(names).decode("utf-8", "surrogateescape").split("\0")  # names hold no NUL
    if lay.key_prefix:
        keys = [lay.key_prefix + k for k in keys]
    size = _label_sizes(rows[:, lay.headers[lay.label] : lay.headers[lay.label] + BLOCK])
    _, one, which = np.unique(_label_codes(rows, size, lay), return_index=True, return_inverse=True)
    at = lay.label_at
    texts = [
        data[i * stride + at : i * stride + at + size[i]].decode("utf-8", "replace").strip() for i in one
    ]
    classes = np.array([_class(decoding, t) for t in texts])[which.reshape(-1)]
    fast = classes >= 0
    if lay.npy_header is not None:
        header = np.frombuffer(lay.npy_header, np.uint8)
        fast &= (rows[:, lay.image_at : lay.image_at + len(header)] == header).all(1)
        at, m = lay.image_at + len(header), lay.pixels
        if fast.all():
            return [
                (data[p : p + m], y, k)
                for p, y, k in zip(range(at, n * stride, stride), classes.tolist(), keys)
            ]
    else:
        fast[:] = False
    out: list = []
    for i, (f, y, key) in enumerate(zip(fast.tolist(), classes.tolist(), keys)):
        p = i * stride
        if f:
            out.append((data[p + at : p + at + m], y, key))
        else:
            image = data[p + lay.image_at : p + lay.image_at + lay.image_size]
            out.append(Sample(key, image, texts[which.reshape(-1)[i]]))
    return out


def _label_codes(rows: np.ndarray, size: np.ndarray, lay: Layout) -> np.ndarray:
    """Per row, a value that is the same exactly when the label bytes are: labels of up to 7
    bytes packed with their size in one uint64 (one sort), longer ones compared whole."""
    label = rows[:, lay.label_at : lay.label_at + LABEL_BYTES] * (np.arange(LABEL_BYTES) < size[:, None])
    if size.max(initial=0) <= 7:
        word = np.zeros((len(rows), 8), np.uint8)
        word[:, :7], word[:, 7] = label[:, :7], size
        return word.view(np.uint64).ravel()
    return np.unique(np.column_stack([size, label]), axis=0, return_inverse=True)[1].reshape(-1)


def _class(decoding: Decoding, text: str) -> int:
    """The class of label ``text``, -1 for a label the per-sample path refuses."""
    try:
        return decoding.label(Sample("", None, text))
    except ValueError:
        return -1


def runs(
    path: str,
    first: int,
    stop: int,
    *,
    image_key: str | None,
    label_key: str,
    decoding: Decoding,
    expected: int | None = None,
) -> Iterator[list]:
    """Samples ``first``.. of local shard ``path`` (at most up to ``stop``) in file order, as lists
    of rows (see the module doc), for as long as they keep the first sample's layout; the caller
    reads the rest per sample (from ``first`` plus the rows it got)."""
    lay = layout(path, image_key=image_key, label_key=label_key, decoding=decoding)
    if lay is None:
        return
    per = max(1, CHUNK_BYTES // lay.stride)
    with open(path, "rb", buffering=0) as f:  # unbuffered: one copy, not two
        end = stop if _ends_cleanly(f, lay, stop, expected) else stop - 1
        st = os.fstat(f.fileno())
        # ctime too: a rewrite in place that puts the old mtime back still moves the ctime
        file = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, lay.stride, lay.headers)
        at, prev = 0, None
        if 0 < first <= _CHECKED.get(file, 0):  # this process checked the rows before ``first``
            at, prev = (
                first,
                np.frombuffer(_read(f, (first - 1) * lay.stride + lay.headers[0], BLOCK), np.uint8),
            )
            prev = prev[lay.digits] if len(prev) == BLOCK else None
        while at < end:  # the rows before ``first`` are checked too: they place the run
            n = min(per, (first if at < first else end) - at)
            data = _read(f, at * lay.stride, n * lay.stride + BLOCK)
            ok, keys = _good_rows(data, n, lay, prev)
            good = _leading(ok)
            if at >= first and good:
                yield _items(data, good, lay, decoding)
            at += good
            _CHECKED[file] = max(_CHECKED.get(file, 0), at)
            if good < n:
                return
            prev = keys[-1]
