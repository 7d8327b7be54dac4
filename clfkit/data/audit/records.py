"""One record per image file: what the audit needs to know of it, from one decode.

A record holds the file's content hash (blake2b of its bytes, as the data cache uses), a hash
of its decoded pixels (upright, as RGB, with its size: the same picture saved as PNG and BMP,
or under two names, hashes the same), a 64-bit perceptual hash, its size and mode, and the
image-quality scores CleanVision computes, by CleanVision's definitions and default thresholds
(lower is worse): dark (99th brightness percentile), light (1 - 5th percentile), low
information (entropy / 10), blurry (edge strength and grey-level spread), odd aspect ratio.

The perceptual hash is pHash as the ``imagehash`` library defines it (grey, 32x32 Lanczos, 2-D
DCT-II, the 8x8 lowest frequencies above their median), computed here on the decoded image:
a few lines of numpy, no dependency, and no second decode; it equals ``imagehash.phash`` bit for
bit. Brightness percentiles are read from a 1024-bin histogram of the image reduced to at most
256 px a side (CleanVision sorts every pixel; for a 12-megapixel photo that costs more than the
decode), blur on at most 64 px like CleanVision. The numeric work (DCT, medians, histograms) is
done once per batch of files, not per image: on 28x28 images per-call overhead is the cost; so is,
for images up to 32 px a side, the pHash's Lanczos enlargement (Pillow's fixed-point arithmetic
as one matrix product per stack of same-sized images), and for every image the blur edges
(``FIND_EDGES``), both equal to PIL's bit for bit.

Records are computed with one process per core, and cached under the cache dir by file content
(``audit/<root hash>.npz``): a second check hashes each file's bytes and decodes only files
it has not seen, so it costs a read of the data, not a decode.
"""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

from clfkit.data import image_files

VERSION = 1  # bump when a field's meaning changes: older cached records are then ignored
RECORD = np.dtype(
    [
        ("digest", "S32"),
        ("pixels", "S32"),
        ("phash", "<u8"),
        ("width", "<i4"),
        ("height", "<i4"),
        ("mode", "S8"),
        ("dark", "<f4"),
        ("light", "<f4"),
        ("low_information", "<f4"),
        ("blurry", "<f4"),
        ("odd_aspect_ratio", "<f4"),
    ]
)
_DCT = np.cos(np.pi * np.outer(np.arange(32), 2 * np.arange(32) + 1) / 64)  # DCT-II basis, N=32
TASK_FILES = 128  # files per pool task: small results, few hand-offs


BRIGHT_BINS = 1024  # brightness percentiles are read from a histogram: within 1/1024 of exact


def perceptual_hashes(gray32: np.ndarray) -> np.ndarray:
    """imagehash's ``phash`` (hash_size 8) of grey 32x32 Lanczos-resized images (N, 32, 32), as
    uint64 (bit 63 first, in imagehash's row-major order): one batched DCT, one median call."""
    low = (_DCT[:8] @ gray32.astype(np.float64) @ _DCT[:8].T).reshape(len(gray32), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def perceptual_hash(gray: Image.Image) -> int:
    """:func:`perceptual_hashes` of one grey PIL image."""
    return int(perceptual_hashes(np.asarray(gray.resize((32, 32), Image.LANCZOS))[None])[0])


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    ratio = max(size) / longest
    return max(int(size[0] // ratio), 1), max(int(size[1] // ratio), 1)


def _row_histograms(arrays: list[np.ndarray], bins: int) -> np.ndarray:
    """(N, bins) counts of each integer array's values, in one bincount over all of them."""
    owner = np.repeat(np.arange(len(arrays)), [a.size for a in arrays])
    values = np.concatenate([a.ravel() for a in arrays]).astype(np.int64)
    return np.bincount(owner * bins + values, minlength=len(arrays) * bins).reshape(len(arrays), bins)


def _percentiles(hist: np.ndarray, q: float) -> np.ndarray:
    """The ``q``-th percentile (0..100) of each row's histogram, as a bin centre in 0..1."""
    cum = np.cumsum(hist, axis=1)
    rank = (cum >= (q / 100) * cum[:, -1:]).argmax(axis=1)
    return (rank + 0.5) / BRIGHT_BINS


def find_edges(gray: np.ndarray) -> np.ndarray:
    """PIL's ``ImageFilter.FIND_EDGES`` of (..., H, W) uint8 grey images, bit for bit: the 3x3
    kernel 8 at the centre, -1 around, clipped to 0..255; the border copied from the input.
    One numpy expression for a stack of same-sized images, where PIL needs a call per image."""
    out = gray.copy()
    if gray.shape[-2] > 2 and gray.shape[-1] > 2:
        x = gray.astype(np.int16)
        ring = (
            x[..., :-2, :-2]
            + x[..., :-2, 1:-1]
            + x[..., :-2, 2:]
            + x[..., 1:-1, :-2]
            + x[..., 1:-1, 2:]
            + x[..., 2:, :-2]
            + x[..., 2:, 1:-1]
            + x[..., 2:, 2:]
        )
        out[..., 1:-1, 1:-1] = np.clip(8 * x[..., 1:-1, 1:-1] - ring, 0, 255)
    return out


def _by_shape(grays: list[np.ndarray], fn: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """``fn`` of each image, called once per group of equal shapes on their stack."""
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(grays)
    groups: dict[tuple, list[int]] = {}
    for i, g in enumerate(grays):
        groups.setdefault(g.shape, []).append(i)
    for members in groups.values():
        for i, e in zip(members, fn(np.stack([grays[i] for i in members]))):
            out[i] = e
    return out


PRECISION_BITS = 22  # Pillow's fixed point for 8-bit resampling (32 - 8 - 2)


def _lanczos(x: np.ndarray) -> np.ndarray:
    safe = np.where(x == 0, 1.0, np.pi * x)
    sinc = np.where(x == 0, 1.0, np.sin(safe) / safe)
    safe3 = np.where(x == 0, 1.0, np.pi * x / 3)
    sinc3 = np.where(x == 0, 1.0, np.sin(safe3) / safe3)
    return np.where((x >= -3.0) & (x < 3.0), sinc * sinc3, 0.0)


@functools.lru_cache(maxsize=64)
def _upscale_weights(size_in: int, size_out: int) -> np.ndarray:
    """Pillow's Lanczos coefficients (precompute_coeffs, normalize_coeffs_8bpc) to enlarge a
    line of ``size_in`` pixels to ``size_out`` >= ``size_in``, as an integer matrix."""
    scale = size_in / size_out
    m = np.zeros((size_out, size_in), np.float64)
    for xx in range(size_out):
        center = (xx + 0.5) * scale
        lo, hi = max(int(center - 3.0 + 0.5), 0), min(int(center + 3.0 + 0.5), size_in)
        w = _lanczos(np.arange(lo, hi) - center + 0.5)
        w = w / w.sum() * (1 << PRECISION_BITS)
        m[xx, lo:hi] = np.trunc(np.where(w < 0, w - 0.5, w + 0.5))
    return m


def lanczos_32(gray: np.ndarray) -> np.ndarray:
    """PIL's ``resize((32, 32), LANCZOS)`` of a stack (N, H, W) of uint8 grey images at most 32
    px a side, bit for bit (horizontal pass, then vertical, each rounded and clipped to 8 bits,
    as Pillow does; checked against PIL for every size up to 32x32): one integer matrix product
    per stack instead of a PIL call (and a copy out of it) per image."""
    if max(gray.shape[-2:]) > 32:
        raise ValueError("lanczos_32 enlarges only: larger images go through PIL")
    # float64 products of integers (< 2**36 here) are exact, and BLAS runs them; the shift is a floor
    x, half, unit = gray.astype(np.float64), float(1 << (PRECISION_BITS - 1)), float(1 << PRECISION_BITS)
    if x.shape[-1] != 32:
        x = np.clip(np.floor((x @ _upscale_weights(x.shape[-1], 32).T + half) / unit), 0, 255)
    if x.shape[-2] != 32:
        x = np.clip(np.floor((_upscale_weights(x.shape[-2], 32) @ x + half) / unit), 0, 255)
    return x.astype(np.uint8)


def measure(img: Image.Image, digest: str) -> tuple:
    """What one image contributes to its record: (fields known now, grey 32x32 for pHash, RGB
    pixels for brightness (at most 256 px a side), grey levels at CleanVision's blur size
    (64 px)); the rest is computed in batches (:func:`finish`): per-image numpy or PIL calls
    would cost more than the decode on small images (edges: one :func:`find_edges` per shape)."""
    mode = img.mode
    if image_files.exif_orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    gray_image = image_files.is_grayscale(img)
    rgb = image_files.to_mode(img, 3)
    pixels = np.asarray(rgb, dtype=np.uint8)
    h = hashlib.blake2b(f"{pixels.shape}".encode(), digest_size=16)
    h.update(pixels)
    gray = rgb.convert("L")
    small = gray if max(gray.size) <= 64 else gray.resize(_fit(gray.size, 64))
    w, hgt = rgb.size
    fields = (
        digest,
        h.hexdigest(),
        w,
        hgt,
        mode[:8],
        min(1.0, 0.1 * (gray if gray_image else rgb).entropy()),
        min(w / hgt, hgt / w),
    )
    for_light = (
        pixels if max(rgb.size) <= 256 else np.asarray(rgb.resize(_fit(rgb.size, 256), Image.BILINEAR))
    )
    small_levels = np.asarray(small)
    gray32 = None if max(w, hgt) <= 32 else np.asarray(gray.resize((32, 32), Image.LANCZOS))  # else batched
    return fields, gray32, for_light.reshape(-1, 3), small_levels


def _brightness_histograms(pixels: list[np.ndarray]) -> np.ndarray:
    """CleanVision's perceived brightness of every pixel, as (N, BRIGHT_BINS) counts over 0..1."""
    a = np.concatenate(pixels).astype(np.float32)
    light = np.sqrt((a * a) @ np.array([0.241, 0.691, 0.068], np.float32)) / 255
    bins = np.minimum((light * BRIGHT_BINS).astype(np.int64), BRIGHT_BINS - 1)
    owner = np.repeat(np.arange(len(pixels)), [len(p) for p in pixels])
    return np.bincount(owner * BRIGHT_BINS + bins, minlength=len(pixels) * BRIGHT_BINS).reshape(
        len(pixels), -1
    )


def finish(measured: list[tuple]) -> list[tuple]:
    """RECORD rows (tuples) of :func:`measure` results, the numeric work done once per batch."""
    if not measured:
        return []
    fields, gray32, pixels, grays = zip(*measured)
    todo = [i for i, g in enumerate(gray32) if g is None]  # small images: their grey is their `grays` entry
    enlarged = iter(_by_shape([grays[i] for i in todo], lanczos_32))
    hashes = perceptual_hashes(np.stack([g if g is not None else next(enlarged) for g in gray32]))
    bright = _brightness_histograms(list(pixels))
    dark, light = _percentiles(bright, 99), 1 - _percentiles(bright, 5)
    edge_hist = _row_histograms(_by_shape(list(grays), find_edges), 256).astype(np.float64)
    levels = np.arange(256)
    n = edge_hist.sum(axis=1)
    mean = edge_hist @ levels / n
    blur = 1 - np.exp(-0.01 * np.sqrt(np.maximum(edge_hist @ (levels**2) / n - mean**2, 0)))
    spread = 1 - np.exp(-0.01 * np.std(_row_histograms(list(grays), 256), axis=1))
    blurry = np.minimum(blur + np.where(spread > 0.18, spread, 0.0), 1.0)  # CleanVision's blurry score
    return [
        (f[0], f[1], int(hv), f[2], f[3], f[4], float(d), float(lt), f[5], float(b), f[6])
        for f, hv, d, lt, b in zip(fields, hashes, dark, light, blurry)
    ]


def _measure_file(path: str) -> tuple[Optional[tuple], Optional[str]]:
    try:
        data = image_files.read_file(path)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        img = image_files.open_image(path, data)
        if 0 in img.size:
            return None, f"the image is empty ({img.size[0]}x{img.size[1]} pixels)"
        return measure(img, digest), None
    except image_files.DecodeError as e:
        return None, str(e)
    except Exception as e:  # truncated data surfaces on load, not on open; PIL raises many types
        return None, f"cannot decode ({type(e).__name__}: {e})"


def _records_of(paths: list[str]) -> list[tuple[Optional[tuple], Optional[str]]]:
    """(record, None) for each decodable file, (None, why not) otherwise."""
    measured = [_measure_file(p) for p in paths]
    done = iter(finish([m for m, _ in measured if m is not None]))
    return [(next(done), None) if m is not None else (None, why) for m, why in measured]


def file_record(path: str) -> tuple[Optional[tuple], Optional[str]]:
    """(record, None) for a decodable file, (None, why not) otherwise."""
    return _records_of([path])[0]


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def compute(paths: list[str], workers: Optional[int] = None) -> list[tuple[Optional[tuple], Optional[str]]]:
    """:func:`file_record` of every path, in order, with one process per core (forked: the
    workers need nothing pickled but file names)."""
    workers = workers or _workers()
    chunks = [paths[i : i + TASK_FILES] for i in range(0, len(paths), TASK_FILES)]
    if workers <= 1 or len(chunks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _records_of(paths)
    pool = ProcessPoolExecutor(
        min(workers, len(chunks)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=signal.signal,
        initargs=(signal.SIGINT, signal.SIG_IGN),
    )
    try:  # Ctrl-C reaches the workers too: they ignore it, the parent stops them (no traceback each)
        return [r for part in pool.map(_records_of, chunks) for r in part]
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # not after every task
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- the cache
def _digest_of(path: str) -> str:
    try:
        return hashlib.blake2b(image_files.read_file(path), digest_size=16).hexdigest()
    except image_files.DecodeError as e:
        return f"unreadable: {e}"


def content_digests(paths: list[str]) -> list[str]:
    """Each file's content hash (file reads and hashlib release the GIL: threads suffice)."""
    with ThreadPoolExecutor(min(32, _workers() * 2)) as pool:
        return list(pool.map(_digest_of, paths, chunksize=64))


def _load_cached(path: Optional[Path]) -> dict[bytes, np.void]:
    if path is None or not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != VERSION or f["records"].dtype != RECORD:
                return {}
            return {r["digest"]: r for r in f["records"]}
    except (OSError, ValueError, KeyError, EOFError):  # damaged: computed again, then replaced
        return {}


def _store(path: Optional[Path], records: np.ndarray) -> Optional[str]:
    """Write the cache file atomically; why not, or None."""
    if path is None:
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, version=np.array(VERSION), records=records)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        return f"could not write the audit cache {path}: {e.strerror or e}"
    return None


def cache_file(base: Optional[Path], root: Path) -> Optional[Path]:
    """Where the records of the data under ``root`` are cached (None: caching off)."""
    if base is None:
        return None
    import PIL  # another PIL may decode the same bytes to other pixels: its own cache file

    source = os.fsencode(root.expanduser().resolve()) + f"\0{PIL.__version__}\0{VERSION}".encode()
    key = hashlib.sha256(source).hexdigest()[:16]  # fsencode: a root whose name is not UTF-8 too
    return base / "audit" / f"{key}.npz"


def records_for(paths: list[str], cache: Optional[Path]) -> tuple[np.ndarray, list[Optional[str]], dict]:
    """(RECORD array, one row per path; per path why it could not be read or None; statistics
    {"decoded": files decoded now, "cached": files served from the cache, "cache_note"}).
    Rows of unreadable files are zero."""
    known = _load_cached(cache)
    digests = content_digests(paths) if known else [None] * len(paths)
    todo = [i for i, d in enumerate(digests) if d is None or d.encode() not in known]
    fresh = compute([paths[i] for i in todo])
    out = np.zeros(len(paths), RECORD)
    errors: list[Optional[str]] = [None] * len(paths)
    for i, d in enumerate(digests):
        if d is not None and d.encode() in known:
            out[i] = known[d.encode()]
    for i, (rec, why) in zip(todo, fresh):
        if rec is None:
            errors[i] = why
        else:
            out[i] = rec
    stats = {"decoded": len(todo), "cached": len(paths) - len(todo), "cache_note": None}
    if todo and cache is not None:  # only the files of now: a renamed or deleted file's record goes
        ok = np.array([e is None for e in errors])
        _, first = np.unique(out["digest"][ok], return_index=True)
        stats["cache_note"] = _store(cache, out[ok][first])
    return out, errors, stats
