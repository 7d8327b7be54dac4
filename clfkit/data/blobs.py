"""Images that arrive as bytes rather than files (a Hugging Face column, a WebDataset sample):
decoded through the one decode path (clfkit.data.image_files) in threads, with the content hash
the run's data record needs."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clfkit.data import image_files
from clfkit.data.class_folders import DecodeResult, _workers
from clfkit.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pnm")


def decode_blob(
    data: bytes, size: tuple[int, int], channels: int | None, resize: str
) -> tuple[np.ndarray, bool]:
    """One image's bytes -> (HWC uint8 array, is grayscale); ``channels`` None decodes to RGB.
    Raises image_files.DecodeError."""
    img = image_files.open_image("<bytes>", data)
    gray = image_files.is_grayscale(img)
    return image_files.decode_image(img, size, 3 if channels is None else channels, resize), gray


def decode_blobs(
    blobs: list[tuple[str, bytes | None]],
    size: tuple[int, int],
    channels: int | None,
    *,
    resize: str,
    on_error: str,
    skipped: list[tuple[str, str]],
    digest: hashlib._Hash | None = None,
) -> list[DecodeResult]:
    """(name, bytes) pairs -> per blob (HWC uint8, is grayscale) or None when unreadable (listed in
    ``skipped`` under its name, or raised when ``on_error`` is "fail"). ``digest`` is fed every
    blob's name and bytes, in order."""

    def work(item: tuple[str, bytes | None]) -> DecodeResult | str:
        name, data = item
        if not data:
            return "no image bytes"
        try:
            return decode_blob(data, size, channels, resize)
        except image_files.DecodeError as e:
            return str(e)

    with ThreadPoolExecutor(_workers()) as pool:
        done = list(pool.map(work, blobs))
    results: list[DecodeResult] = []
    for (name, data), r in zip(blobs, done):
        if digest is not None:
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0" + (data or b""))
        if isinstance(r, str):
            if on_error == "fail":
                raise DataError(f"{name}: {r} (set data.on_error: skip to skip such images)")
            skipped.append((name, r))
            r = None
        results.append(r)
    return results
