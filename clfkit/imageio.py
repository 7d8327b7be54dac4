"""Decoding one image file into the uint8 array a model sees: the single definition shared by
training (folder datasets), export (parity batch) and predict, so the three cannot drift.

Only PIL and numpy: predict needs no torch for this part.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif")
# Larger than any sane photo, far below what would exhaust memory: 64 Mpx.
MAX_PIXELS = 64_000_000
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class DecodeError(Exception):
    """A file that is not a decodable image; the message says why."""


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully load an image, refusing decompression bombs and truncated files."""
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DecodeError(f"{w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit "
                                  f"(possible decompression bomb)")
            return img
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except Exception as e:  # PIL raises many types for bad bytes
        raise DecodeError(f"not a readable image ({type(e).__name__}: {e})") from None


def is_grayscale(img: Image.Image) -> bool:
    return img.mode in GRAY_MODES or (img.mode == "P" and _palette_is_gray(img))


def _palette_is_gray(img: Image.Image) -> bool:
    pal = img.getpalette()
    if not pal:
        return False
    rgb = np.asarray(pal, dtype=np.uint8).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to 'RGB' (channels=3) or 'L' (channels=1). Transparent pixels are
    composited on white; 16-bit and float images are scaled to 0..255."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def resize(img: Image.Image, size: tuple[int, int], method: str) -> Image.Image:
    """``squash``: resize to (H, W) ignoring aspect; ``crop``: scale the shorter side, then
    center-crop (keeps aspect)."""
    h, w = size
    if img.size == (w, h):
        return img
    if method == "crop":
        iw, ih = img.size
        scale = max(w / iw, h / ih)
        nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        left, top = (nw - w) // 2, (nh - h) // 2
        return img.crop((left, top, left + w, top + h))
    return img.resize((w, h), Image.BILINEAR, reducing_gap=3.0)


def decode(path: str | os.PathLike, size: tuple[int, int], channels: int,
           method: str = "squash") -> np.ndarray:
    """File -> (H, W, channels) uint8 array. Raises DecodeError for anything unreadable."""
    return decode_image(open_image(path), size, channels, method)


def decode_image(img: Image.Image, size: tuple[int, int], channels: int, method: str = "squash") -> np.ndarray:
    """An opened PIL image -> (H, W, channels) uint8 array."""
    try:
        if img.format == "JPEG":  # let libjpeg decode at 1/2, 1/4, 1/8 scale when it can
            img.draft("RGB" if channels == 3 else "L", (size[1] * 2, size[0] * 2))
        img = to_mode(img, channels)
        img = resize(img, size, method)
        arr = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as e:  # truncated data surfaces on load, not on open
        raise DecodeError(f"cannot decode ({type(e).__name__}: {e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def list_images(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """All files under ``root`` recursively, sorted by relative path: (images, other files)."""
    root = Path(root)
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            p = Path(dirpath) / f
            (images if is_image_file(p) else others).append(p)
    key = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    return sorted(images, key=key), sorted(others, key=key)


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
