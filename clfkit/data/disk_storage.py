"""``data.storage: disk``: a split's decoded images stay in their .npy file (one per split, the
data cache's entry) and are read in large runs of rows, never mapped whole into memory.

Reads use ``pread`` into fresh buffers rather than a memory map: pages of a mapping that a
process has touched count toward its resident memory, so walking a 2 GB mapping once would
show 2 GB of RSS; reads leave the pages in the kernel's page cache (shared, reclaimable) and
the process holds only the buffers it reads into.

``auto`` picks disk when the decoded set is larger than the memory budget: half the memory
available when the run starts, shared by the processes of a torchrun launch on this machine,
or ``CLFKIT_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix). The budget is a property of the
machine, not of the recipe (like the cache dir), so it is an environment variable: the same
recipe runs from memory on a large machine and from disk on a small one.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
import hashlib
import os
from pathlib import Path
import re
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch

from clfkit.errors import ClfkitError, DataError


STORAGES = ("auto", "memory", "disk")
BUDGET_ENV = "CLFKIT_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
HASH_BLOCK = 16 << 20  # bytes per read while hashing a file


# --------------------------------------------------------------------------- the budget
def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget() -> int:
    """Bytes of decoded images ``auto`` keeps in memory (see the module doc)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # each torchrun rank holds a copy
        return _available_memory() // 2 // max(1, ranks)
    try:
        return parse_bytes(text)
    except ValueError:
        raise ClfkitError(
            f"{BUDGET_ENV}={text!r} is not an amount of memory (e.g. 8G, 512M, 1000000; "
            f"unset: half the available memory)"
        ) from None


def parse_bytes(text: str) -> int:
    """Bytes in ``text``: a number, optionally with a K/M/G/T suffix (KiB.. also read); ValueError if not."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"not an amount of memory: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def resolve(storage: str, nbytes: int) -> str:
    """ "memory" or "disk" for a decoded set of ``nbytes`` under ``storage``."""
    if storage == "auto":
        return "disk" if nbytes > memory_budget() else "memory"
    return storage


# --------------------------------------------------------------------------- where a load decodes to
@dataclass
class Target:
    """Set around a dataset's load by the data cache: ``storage`` as the recipe asks, and the
    folder a disk split's file is decoded into (the cache entry being written), made by
    ``make_folder`` when first asked for (a set that stays in memory makes none)."""

    storage: str
    make_folder: Callable[[], Path]
    made: Optional[Path] = None

    @property
    def folder(self) -> Path:
        if self.made is None:
            self.made = self.make_folder()
        return self.made


_TARGET: contextvars.ContextVar[Optional[Target]] = contextvars.ContextVar(
    "clfkit_storage_target", default=None
)


@contextlib.contextmanager
def decode_target(target: Target) -> Iterator[Target]:
    token = _TARGET.set(target)
    try:
        yield target
    finally:
        _TARGET.reset(token)


def current_target() -> Optional[Target]:
    """The target a loader that can decode straight to disk (folders) should honour, or None."""
    return _TARGET.get()


# --------------------------------------------------------------------------- reading
def _read_exact(fd: int, buf: memoryview, offset: int, path: str) -> None:
    while len(buf):  # pread may return fewer bytes than asked: read on
        try:
            n = os.preadv(fd, [buf], offset)
        except OSError as e:  # e.g. EIO: the error names no file by itself
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
        if n <= 0:
            raise DataError(f"{path} ended early (truncated while in use?)")
        buf, offset = buf[n:], offset + n


def file_hash(path: Union[str, Path], offset: int, nbytes: int) -> str:
    """blake2b of the data bytes of an .npy file, read in blocks: the same digest the cache
    computes of the array in memory."""
    h = hashlib.blake2b(digest_size=16)
    buf = memoryview(bytearray(min(HASH_BLOCK, max(1, nbytes))))
    fd = os.open(path, os.O_RDONLY)
    try:
        for pos in range(0, nbytes, len(buf)):
            part = buf[: min(len(buf), nbytes - pos)]
            _read_exact(fd, part, offset + pos, str(path))
            h.update(part)
    finally:
        os.close(fd)
    return h.hexdigest()


class DiskImages:
    """uint8 (N, C, H, W) images in an .npy file, or a subset of its rows (``rows``), with the
    parts of a tensor's interface clfkit reads images through: ``len``, ``shape``, ``dtype``,
    indexing by int, slice or index tensor (each returns a tensor read from the file),
    ``index_select`` and :meth:`select` (a subset without reading)."""

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")
    on_disk = True
    # whatever must live while the file is read (a private folder's lease, clfkit.data.disk_spill):
    # shared by the subsets of :meth:`select`, so the last one gone lets the folder go
    keeper: object = None

    def __init__(self, path: Union[str, Path], rows: Optional[np.ndarray] = None):
        try:
            header = np.load(path, mmap_mode="r")  # checks the header; the mapping is dropped at once
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: {e}") from None
        if header.dtype != np.uint8 or header.ndim != 4 or not header.flags.c_contiguous:
            raise DataError(f"{path} holds {header.dtype} {header.shape}, expected uint8 (N, C, H, W)")
        self.path, self.offset = str(path), int(header.offset)
        self.file_rows, self.row_shape = int(header.shape[0]), tuple(int(s) for s in header.shape[1:])
        self.row_bytes = int(np.prod(self.row_shape))
        del header
        self.rows = rows
        self._fd: Optional[int] = None
        self._pid = -1

    # ------------------------------------------------------------------ tensor-like
    def __len__(self) -> int:
        return self.file_rows if self.rows is None else len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.row_shape))

    @property
    def nbytes(self) -> int:
        return len(self) * self.row_bytes

    def data_hash(self) -> str:
        return file_hash(self.path, self.offset, self.file_rows * self.row_bytes)

    def select(self, idx: Union[torch.Tensor, np.ndarray]) -> "DiskImages":
        """The images at positions ``idx``, as a subset read later (nothing is read now)."""
        idx = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx, dtype=np.int64)
        view = DiskImages.__new__(DiskImages)
        view.__dict__.update(self.__dict__)
        view.rows, view._fd, view._pid = (idx if self.rows is None else self.rows[idx]), None, -1
        return view

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} images")
            return self.read(np.array([i]))[0]
        if isinstance(key, slice):  # its own rows only: batch-by-batch slicing stays linear
            return self.read(np.arange(*key.indices(len(self)), dtype=np.int64))
        return self.read(np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key, dtype=np.int64))

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        assert dim == 0
        return self[idx]

    def numpy(self) -> np.ndarray:
        """Every image, in memory (export's calibration set, not training)."""
        return self[:].numpy()

    def __getstate__(self) -> dict:  # loader workers (spawn) open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if getattr(self, "_fd", None) is not None and self._pid == os.getpid():
            os.close(self._fd)

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # first read, or a forked loader worker
            try:
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            except OSError as e:  # removed or unreadable while the run uses it
                raise DataError(f"{self.path}: cannot open ({e.strerror or e})") from None
        return self._fd

    def read(
        self,
        positions: np.ndarray,
        out: Optional[torch.Tensor] = None,
        staging: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """The images at ``positions`` as one (n, C, H, W) tensor (into ``out`` when given,
        e.g. a pinned buffer). Rows are read in runs of consecutive file rows, one read each,
        into ``staging`` when given and large enough (a reader's reused buffer)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"positions outside 0..{len(self) - 1}")
        wanted = positions if self.rows is None else self.rows[positions]
        in_order = len(wanted) < 2 or bool((np.diff(wanted) > 0).all())
        unique, inverse = (wanted, None) if in_order else np.unique(wanted, return_inverse=True)
        if staging is not None and len(staging) >= len(unique):
            staging = staging[: len(unique)]
        else:
            staging = torch.empty((len(unique), *self.row_shape), dtype=torch.uint8)
        if in_order and out is not None:
            staging = out  # read straight into the caller's buffer
        flat = memoryview(staging.numpy().reshape(-1)).cast("B") if len(unique) else None
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        fd, rb = self._descriptor(), self.row_bytes
        for s, e in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(unique)]])):
            if e > s:
                _read_exact(fd, flat[s * rb : e * rb], self.offset + int(unique[s]) * rb, self.path)
        if in_order:
            return staging
        return torch.index_select(staging, 0, torch.from_numpy(inverse.reshape(-1)), out=out)


def copy_rows(
    src: DiskImages,
    positions: np.ndarray,
    dst: Path,
    channels: Optional[int] = None,
    block_bytes: int = 64 << 20,
) -> None:
    """Write ``src``'s images at ``positions`` (their first ``channels`` channels when given) to
    a new .npy file ``dst``, in blocks: a disk split is never held in memory whole."""
    c = src.row_shape[0] if channels is None else channels
    arr = np.lib.format.open_memmap(
        dst, mode="w+", dtype=np.uint8, shape=(len(positions), c, *src.row_shape[1:])
    )
    offset, row_bytes = arr.offset, int(np.prod(arr.shape[1:]))
    del arr
    step = max(1, block_bytes // src.row_bytes)
    fd = os.open(dst, os.O_WRONLY)
    try:
        for i in range(0, len(positions), step):
            block = src.read(positions[i : i + step])[:, :c].contiguous().numpy()
            data, pos = memoryview(block.reshape(-1)).cast("B"), offset + i * row_bytes
            while len(data):
                n = os.pwrite(fd, data, pos)
                data, pos = data[n:], pos + n
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk(images) -> bool:
    return getattr(images, "on_disk", False)


# --------------------------------------------------------------------------- streaming statistics
def channel_mean_std(
    images, limit: int = 50000, block_bytes: int = 16 << 20
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale, std with Bessel's correction) of the first
    ``limit`` images, read in blocks: exact integer sums, so memory and disk storage (and any
    block size) give the very same numbers, and a disk set is never loaded whole."""
    n = min(len(images), limit)
    c = int(images.shape[1])
    per_image = int(np.prod(tuple(images.shape[1:])))
    step = max(1, block_bytes // (8 * per_image))
    total, squares = torch.zeros(c, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)
    for i in range(0, n, step):
        x = images[i : min(n, i + step)].to("cpu", torch.int64)
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    count = n * per_image // c
    mean = total.double() / count
    var = (squares.double() - total.double() * mean) / max(1, count - 1)
    std = (var.clamp_min(0).sqrt() / 255).clamp_min(1e-3)
    return [round(v, 6) for v in (mean / 255).tolist()], [round(v, 6) for v in std.tolist()]
