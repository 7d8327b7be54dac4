"""Small images as raw pixels: ``clfkit data pack --raw auto`` stores a small lossless image as its
decoded uint8 pixels in a ``.npy`` sample, so a streamed epoch reads them with one buffer view
instead of a PNG decode (at 32 px the decode was most of a streamed sample's cost).

Only images whose decode is exactly their pixels qualify: mode RGB or L, not JPEG (libjpeg's
draft scaling depends on the target size), upright (no EXIF rotation), at most
:data:`MAX_PIXELS`. Training then gets from the raw pixels exactly what it would get from the
original file: the same mode conversion and resize, from the same pixels.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from clfkit.data import image_files

MAX_PIXELS = 64 * 64  # "small": above it the raw pixels outgrow a PNG, and decode is a smaller share
MAGIC = b"\x93NUMPY"
_HEADERS: dict[
    bytes, tuple[tuple[int, ...], int]
] = {}  # .npy header -> (shape, bytes): a set's samples share a few


def encode(data: bytes) -> bytes | None:
    """The .npy bytes of the pixels of image file ``data``, or None when it does not qualify."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if (
                img.format == "JPEG"
                or img.mode not in ("RGB", "L")
                or w * h > MAX_PIXELS
                or image_files.exif_orientation(img) != 1
            ):
                return None
            pixels = np.asarray(img, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - unreadable: packed as it is, and reported when trained on
        return None
    out = io.BytesIO()
    np.lib.format.write_array(out, pixels, allow_pickle=False)
    return out.getvalue()


def _shape(data: bytes) -> tuple[tuple[int, ...], int, int]:
    """(shape, bytes, offset of the pixels) of a uint8 .npy sample; DecodeError for anything else."""
    major = data[6] if len(data) > 9 else 0
    start = (
        10 + int.from_bytes(data[8:10], "little")
        if major == 1
        else (12 + int.from_bytes(data[8:12], "little") if major in (2, 3) else 0)
    )
    header = data[:start]
    known = _HEADERS.get(header)
    if known is None:
        try:
            f = io.BytesIO(header)
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(f)
        except Exception as e:  # noqa: BLE001 - numpy raises ValueError and others for bad headers
            raise image_files.DecodeError(f"not a readable .npy sample ({e})") from None
        if (
            dtype != np.uint8
            or fortran
            or len(shape) not in (2, 3)
            or (len(shape) == 3 and shape[2] not in (1, 3))
        ):
            raise image_files.DecodeError(
                f".npy sample of dtype {dtype}, shape {shape}: raw pixels must be "
                f"uint8 (H, W), (H, W, 1) or (H, W, 3)"
            )
        known = _HEADERS[header] = (tuple(shape), int(np.prod(shape)))
    return known[0], known[1], start


def decode(data: bytes, size: tuple[int, int], channels: int, resize: str) -> np.ndarray:
    """A .npy sample of raw pixels -> (H, W, channels) uint8, as image_files.decode_image
    would give from the original file. Raises image_files.DecodeError."""
    shape, nbytes, start = _shape(data)
    if len(data) - start != nbytes:
        raise image_files.DecodeError(
            f".npy sample holds {len(data) - start} bytes of pixels; shape {shape} "
            f"needs {nbytes} (truncated?)"
        )
    pixels = np.frombuffer(data, np.uint8, offset=start).reshape(shape)
    c = 1 if len(shape) == 2 else shape[2]
    if tuple(shape[:2]) == tuple(size) and c == channels:
        return pixels.reshape(shape[0], shape[1], c).copy()
    img = Image.fromarray(pixels.reshape(shape[:2]) if c == 1 else pixels, "L" if c == 1 else "RGB")
    return image_files.decode_image(img, size, channels, resize, orientation=1)
