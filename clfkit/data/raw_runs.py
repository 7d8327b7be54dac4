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
path never yields a wrong pixel, only the same samples sooner.

A row comes out as ``(pixels, class, key)``, its .npy pixels as bytes already in the shape
training wants, when its label is valid and its .npy header is the first sample's, of shape
(image_size, channels); any other row comes out as the :class:`clfkit.data.shards.Sample` the
per-sample reader would give, decoded (or refused) by the usual rules.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Layout:
    """What every row of a run shares with the shard's first sample."""

    stride: int  # bytes per sample
    headers: tuple[int, int]  # offsets of the two member headers in a row
    first: tuple[np.ndarray, np.ndarray]  # the first sample's two headers
    fixed: tuple[np.ndarray, np.ndarray]  # per header: True at the bytes every row must repeat
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
    fixed = tuple(~np.isin(np.arange(BLOCK), f) for f in free)
    npy_header, pixels = _pixels_header(npy, decoding)
    return Layout(
        stride=at,
        headers=(a0, a1),
        first=(h0, h1),
        fixed=fixed,
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
    (and the label's size), with a valid checksum."""
    ok = ~((h != lay.first[which]) & lay.fixed[which]).any(1)
    d = h[:, lay.digits]
    ok &= ((d >= 48) & (d <= 57)).all(1)
    c = h[:, 148:154].astype(np.int64) - 48
    ok &= ((c >= 0) & (c <= 7)).all(1)
    ok &= c @ _OCTAL[5:] == h.sum(1, dtype=np.int64) - h[:, 148:156].sum(1, dtype=np.int64) + 256
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
    rows = np.frombuffer(data, np.uint8, count=fit * lay.stride).reshape(fit, lay.stride)
    h = [rows[:, at : at + BLOCK] for at in lay.headers]
    ok = _headers_ok(h[0], 0, lay) & _headers_ok(h[1], 1, lay)
    size = _label_sizes(h[lay.label])
    ok &= (size > 0) & (size <= LABEL_BYTES)
    keys = h[0][:, lay.digits]
    ok &= (keys == h[1][:, lay.digits]).all(1)
    ok[1:] &= (keys[1:] != keys[:-1]).any(1)
    if prev is not None and fit:
        ok[0] &= bool((keys[0] != prev).any())
    tail = data[fit * lay.stride : fit * lay.stride + BLOCK].ljust(BLOCK, b"\1")  # short: neither end
    nxt = np.concatenate([h[0][1:], np.frombuffer(tail, np.uint8)[None]])
    starts = _headers_ok(nxt, 0, lay) & (nxt[:, lay.digits] != keys).any(1)
    if lay.label == 0:  # the next header is a label's: its size must parse too
        starts &= _label_sizes(nxt) >= 0
    ends = (nxt == 0).all(1) | starts
    return ok & ends, keys


def _leading(ok: np.ndarray) -> int:
    return len(ok) if ok.all() else int(np.argmin(ok))


def _ends_cleanly(f, lay: Layout, stop: int) -> bool:
    """Would the per-sample reader, having read sample ``stop - 1``, get past sample ``stop``
    (the archive's end, or a whole sample of this layout)? It reads that far before it stops."""
    f.seek(stop * lay.stride)
    if f.read(BLOCK) == bytes(BLOCK):
        return True
    f.seek((stop - 1) * lay.stride)
    ok, _ = _good_rows(f.read(2 * lay.stride + BLOCK), 2, lay, None)
    return len(ok) == 2 and bool(ok[1])


def _items(data: bytes, n: int, lay: Layout, decoding: Decoding) -> list:
    """The first ``n`` rows of ``data`` (checked) as (pixels, class, key) or Sample."""
    stride = lay.stride
    rows = np.frombuffer(data, np.uint8, count=n * stride).reshape(n, stride)
    h0, width = lay.headers[0], lay.key_width
    names = np.ascontiguousarray(rows[:, h0 : h0 + width]).view(f"S{width}").ravel().tolist()
    keys = [lay.key_prefix + k.decode("utf-8", "surrogateescape") for k in names]
    size = _label_sizes(rows[:, lay.headers[lay.label] : lay.headers[lay.label] + BLOCK])
    _, one, which = np.unique(_label_codes(rows, size, lay), return_index=True, return_inverse=True)
    texts = [
        data[i * stride + lay.label_at : i * stride + lay.label_at + size[i]]
        .decode("utf-8", "replace")
        .strip()
        for i in one.tolist()
    ]
    classes = [_class(decoding, t) for t in texts]
    fast = np.zeros(n, bool)
    if lay.npy_header is not None:
        header = np.frombuffer(lay.npy_header, np.uint8)
        fast = (rows[:, lay.image_at : lay.image_at + len(header)] == header).all(1)
    out: list = []
    for i, (key, t) in enumerate(zip(keys, which.reshape(-1).tolist())):
        at = i * stride
        y = classes[t]
        if fast[i] and y is not None:
            p = at + lay.image_at + len(lay.npy_header)
            out.append((data[p : p + lay.pixels], y, key))
        else:
            image = data[at + lay.image_at : at + lay.image_at + lay.image_size]
            out.append(Sample(key, image, texts[t]))
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


def _class(decoding: Decoding, text: str) -> int | None:
    try:
        return decoding.label(Sample("", None, text))
    except ValueError:
        return None


def runs(
    path: str, first: int, stop: int, *, image_key: str | None, label_key: str, decoding: Decoding
) -> Iterator[list]:
    """Samples ``first``.. of local shard ``path`` (at most up to ``stop``) in file order, as lists
    of rows (see the module doc), for as long as they keep the first sample's layout; the caller
    reads the rest per sample (from ``first`` plus the rows it got)."""
    lay = layout(path, image_key=image_key, label_key=label_key, decoding=decoding)
    if lay is None:
        return
    per = max(1, CHUNK_BYTES // lay.stride)
    with open(path, "rb") as f:
        end = stop if _ends_cleanly(f, lay, stop) else stop - 1
        at, prev = 0, None
        while at < end:  # the rows before ``first`` are checked too: they place the run
            n = min(per, (first if at < first else end) - at)
            f.seek(at * lay.stride)
            data = f.read(n * lay.stride + BLOCK)
            ok, keys = _good_rows(data, n, lay, prev)
            good = _leading(ok)
            if at >= first and good:
                yield _items(data, good, lay, decoding)
            at += good
            if good < n:
                return
            prev = keys[-1]
