"""Decoding one image file into the uint8 array a model sees: the single definition shared by
training (folder datasets), export (parity batch) and predict, so the three cannot drift.

Only PIL and numpy: predict needs no torch for this part.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageFile

from clfkit.errors import DecodeError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".jfif",
)
# Larger than any sane photo, far below what would exhaust memory: 64 Mpx.
MAX_PIXELS = 64_000_000
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Images of more than 8 bits per pixel map to 0..255 by a fixed rule per mode (docs/images.md),
# never by each image's own range: a 4x darker copy must stay 4x darker, and one hot or
# non-finite pixel must not blacken the rest. Mode -> (lowest, highest) value kept; the range
# maps linearly onto 0..255 and values outside it are clipped.
WIDE_MODES = {
    "I;16": (0, 65535),
    "I;16B": (0, 65535),
    "I;16L": (0, 65535),
    "I;16N": (0, 65535),
    "I": (0, 65535),  # 32-bit int: what PIL gives 16-bit PNGs and most 16-bit TIFFs
    "F": (0.0, 1.0),
}  # 32-bit float: the 0..1 convention of float images
EXIF_ORIENTATION = 0x0112  # 1 upright; 2-8 mirrored and/or rotated; 5-8 swap width and height


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def read_file(path: str | os.PathLike) -> bytes:
    """The file's bytes (symbolic links followed), or DecodeError saying why it cannot be read.
    Only a regular file is read: a FIFO would block the read forever, a device such as
    /dev/zero would fill memory. One open (non-blocking, so a FIFO does not wait for a
    writer), fstat and read: a third of the cost of stat + Path.read_bytes on a small file,
    which the first decode pays per image."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError as e:
        raise DecodeError(_unreadable(path, e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError(
                f"not a regular file: {file_kind(st.st_mode)}"
                f"{' (through a symbolic link)' if os.path.islink(path) else ''}"
            )
        data = _read_all(fd, st.st_size)
    except OSError as e:
        raise DecodeError(_unreadable(path, e)) from None
    finally:
        os.close(fd)
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


_OPEN_FLAGS = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _read_all(fd: int, size: int) -> bytes:
    """Everything up to end-of-file: one read() when the file is ``size`` bytes as fstat said
    (asking for one more byte shows it ended there), more when it grew, is over 2 GB, or the
    read came back short (FUSE and network filesystems may return less than asked before the
    end: Python's own readall loops too)."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data  # end of file reached
    parts = [data]
    while chunk := os.read(fd, 1 << 24):
        parts.append(chunk)
    return b"".join(parts)


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words ("a named pipe (FIFO)", "a folder")."""
    return {
        stat.S_IFIFO: "a named pipe (FIFO)",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFSOCK: "a socket",
        stat.S_IFDIR: "a folder",
    }.get(stat.S_IFMT(mode), "not a file")


def _unreadable(path: str | os.PathLike, e: OSError) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return f"symbolic link to {os.readlink(path)}, which does not exist"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):  # a socket cannot be opened at all (ENXIO)
        return f"not a regular file: {file_kind(mode)}"
    return f"cannot read the file ({e.strerror or e})"


def open_image(path: str | os.PathLike, data: Optional[bytes] = None) -> Image.Image:
    """Open an image, refusing decompression bombs. ``data``: the file's bytes when the caller
    has read them already (the data cache hashes exactly the bytes that are decoded)."""
    if data is None:
        data = read_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_pixels(img)
            return img
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except Image.UnidentifiedImageError:  # its message names a memory address: no use to anyone
        raise DecodeError("not a readable image (no image format recognises its bytes)") from None
    except Exception as e:  # PIL raises many types for bad bytes
        raise DecodeError(f"not a readable image ({type(e).__name__}: {e})") from None


def check_pixels(img: Image.Image) -> None:
    """A DecodeError for an image over :data:`MAX_PIXELS`: every item kind (file, PIL image,
    array) has the same limit."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DecodeError(
            f"{w}x{h} pixels is over the {MAX_PIXELS:,}-pixel limit (possible decompression bomb)"
        )


# Characters that would break a one-name-per-line file (or a tab-separated one) if written raw.
_LINE_BREAKING = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def escape_path(name: str) -> str:
    r"""``name`` fit for one line of a text file: a backslash, a control character (newline,
    tab, ...), a Unicode line separator, and each byte of a file name that is not valid UTF-8
    (held by Python as a surrogate escape) are written as backslash escapes: ``\\``, ``\n``,
    ``\t``, ``\r``, ``\xNN`` for a raw byte NN (or an ASCII control), ``\uNNNN`` for a Unicode
    line break (U+0085, U+2028, U+2029). Other characters, spaces included, are kept as they
    are. The escapes are unambiguous: the original name, byte for byte, can be read back."""
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for ch in name:
        code = ord(ch)
        if ch in _LINE_BREAKING:
            out.append(_LINE_BREAKING[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code in (0x85, 0x2028, 0x2029) or 0xD800 <= code <= 0xDFFF:  # Unicode line breaks
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


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
    composited on white; 16-bit, 32-bit and float images map by :data:`WIDE_MODES`."""
    if img.mode in WIDE_MODES:
        img = Image.fromarray(wide_to_uint8(np.asarray(img), img.mode), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode == "La":  # premultiplied alpha: PIL converts it only to LA
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """The pixel values of a ``mode`` image (one of :data:`WIDE_MODES`) as uint8 by the mode's
    fixed range, rounded to the nearest level; values outside the range clip. A DecodeError
    when any is NaN or infinite (no pixel value says what such a pixel looked like), or when
    most lie outside the range (data in another scale, e.g. a float image of 0..255, which
    clipping would turn white)."""
    low, high = WIDE_MODES[mode]
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(values.size - np.count_nonzero(finite))
            raise DecodeError(
                f"{bad} of its {values.size} pixel values are not finite (NaN or infinite) in this "
                f"mode {mode} (32-bit float) image; fix or remove the image"
            )
    outside = np.count_nonzero((values < low) | (values > high))
    if outside * 2 > values.size:  # a few hot pixels clip; an image mostly outside would decode flat
        raise DecodeError(
            f"{outside} of its {values.size} pixel values lie outside {low}..{high}, the range mode "
            f"{mode} images are read in (this one holds {values.min():g}..{values.max():g}), so it "
            f"would decode nearly flat; rescale it into that range or to 8 bits first "
            f"(docs/images.md)"
        )
    scaled = (np.clip(values, low, high).astype(np.float64) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


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


def decode(
    path: str | os.PathLike, size: tuple[int, int], channels: int, method: str = "squash"
) -> np.ndarray:
    """File -> (H, W, channels) uint8 array. Raises DecodeError for anything unreadable."""
    return decode_image(open_image(path), size, channels, method)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright), 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block must not cost the image: PIL raises many types
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_image(
    img: Image.Image,
    size: tuple[int, int],
    channels: int,
    method: str = "squash",
    orientation: Optional[int] = None,
) -> np.ndarray:
    """An opened PIL image that is clfkit's own (it may be changed) -> (H, W, channels) uint8
    array, turned upright as its EXIF ``orientation`` says (cameras store portrait photos
    sideways and set the tag; None: read it from ``img``). A caller's image goes through
    :func:`decode_callers_image`."""
    if 0 in img.size:  # resizing would invent pixels: a prediction of nothing
        raise DecodeError(f"the image is empty ({img.size[0]}x{img.size[1]} pixels)")
    try:
        orientation = exif_orientation(img) if orientation is None else orientation
        if img.format == "JPEG":  # let libjpeg decode at 1/2, 1/4, 1/8 scale when it can
            h, w = size if orientation < 5 else size[::-1]  # the stored image is still sideways
            img.draft("RGB" if channels == 3 else "L", (w * 2, h * 2))
        if orientation != 1:
            img = img.transpose(_UPRIGHT[orientation])
        img = to_mode(img, channels)
        img = resize(img, size, method)
        arr = np.asarray(img, dtype=np.uint8)
    except DecodeError:
        raise
    except Exception as e:  # truncated data surfaces on load, not on open
        raise DecodeError(f"cannot decode ({type(e).__name__}: {e})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


# EXIF orientation -> the transpose that makes the stored pixels upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# PIL loads an opened image lazily from its file and caches its EXIF: one image object read by
# two threads at once (the same object twice in one Predictor call) can fail or mix data. One
# lock per object (by id: a PIL image is not hashable; the caller holds it alive meanwhile), so
# distinct images still load in parallel.
_LOCKS_GUARD = threading.Lock()
_IMAGE_LOCKS: dict[int, list] = {}  # id(image) -> [its lock, threads using the entry]


@contextmanager
def _reading(img: Image.Image) -> Iterator[None]:
    """Hold ``img``'s own lock: one thread at a time reads that object."""
    with _LOCKS_GUARD:
        entry = _IMAGE_LOCKS.setdefault(id(img), [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _LOCKS_GUARD:
            entry[1] -= 1
            if not entry[1]:
                del _IMAGE_LOCKS[id(img)]


def decode_callers_image(
    img: Image.Image, size: tuple[int, int], channels: int, method: str = "squash"
) -> np.ndarray:
    """A PIL image the caller owns -> the array :func:`decode` gives for a file of it: upright
    by its EXIF orientation, converted and resized the same way. The caller's object is only
    read (never drafted, resized or converted in place), one thread at a time."""
    if not isinstance(img, Image.Image):
        raise DecodeError(f"not a PIL image: {type(img).__name__}")
    check_pixels(img)
    with _reading(img):
        orientation = exif_orientation(img)
        try:
            private = img.copy()  # loads the caller's image once; the copy is ours to change
        except Exception as e:  # a truncated file surfaces here, on load
            raise DecodeError(f"cannot decode ({type(e).__name__}: {e})") from None
    return decode_image(private, size, channels, method, orientation=orientation)


@dataclass
class Listing:
    """What :func:`walk_files` found under a folder."""

    # paths as strings (root joined with the relative path): 20k Path objects cost 0.1 s of a
    # first decode's serial part; sorted by relative path
    images: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # files without an image extension
    not_followed: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why it was not read)
    folders: dict[tuple[int, int], Path] = field(default_factory=dict)  # (device, inode) -> path walked


def walk_files(root: str | os.PathLike) -> Listing:
    """Every non-hidden file under ``root``, recursively, following symbolic links to folders.
    A link to a folder already walked, or to one that holds ``root`` (a loop), is not followed
    (listed in ``not_followed``), so no folder is read twice and no walk runs forever."""
    root = Path(root)
    real_root = os.path.realpath(root)
    out = Listing()
    out.folders[folder_identity(root)] = root

    def unreadable(e: OSError) -> None:
        out.not_followed.append((Path(e.filename), f"cannot list the folder ({e.strerror or e})"))

    found: dict[bool, list[tuple[str, str]]] = {True: [], False: []}  # is image -> (relative path, path)
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            p = Path(dirpath, d)
            ident = folder_identity(p)
            if contains(os.path.realpath(p), real_root):
                out.not_followed.append(
                    (
                        p,
                        f"link to {escape_path(os.path.realpath(p))}, which holds "
                        f"this folder (a loop); not followed",
                    )
                )
            elif ident in out.folders:
                out.not_followed.append(
                    (p, f"the same folder as {escape_path(str(out.folders[ident]))}; not read twice")
                )
            elif ident is not None:
                out.folders[ident] = p
                keep.append(d)
        dirnames[:] = keep
        rel_dir, folder = os.path.relpath(dirpath, root), os.path.join(dirpath, "")
        for f in filenames:
            if not f.startswith("."):
                found[is_image_file(f)].append((f if rel_dir == "." else f"{rel_dir}/{f}", folder + f))
    out.images = [p for _, p in sorted(found[True], key=lambda item: item[0])]
    out.others = [p for _, p in sorted(found[False], key=lambda item: item[0])]
    return out


def folder_identity(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    """(device, inode) of what ``path`` names, through links: one folder reached two ways
    (links, loops) has one identity. None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def contains(folder: str, path: str) -> bool:
    """``folder`` is ``path`` or one of its ancestors (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(root: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """All files under ``root`` recursively (symbolic links followed, loops not), sorted by
    relative path: (images, other files)."""
    listing = walk_files(root)
    return [Path(p) for p in listing.images], [Path(p) for p in listing.others]


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
