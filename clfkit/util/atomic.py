"""Atomic file writes: a temp file in the same folder, fsync, then rename over the target.
A crash at any moment leaves either the previous file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from clfkit.errors import WriteError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file next to ``path``; on success it replaces ``path`` atomically.
    A symbolic link is written through (its target is replaced, the link stays). A path that
    names no file to replace, a device, a FIFO or a socket (``-o /dev/stdout``, ``/dev/null``,
    a pipe), is written straight into: a rename would put a plain file in its place."""
    path = Path(path)
    if _is_stream(path):
        with _stream_open(path, mode, encoding) as f:
            yield f
        return
    shown, path = path, Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    except OSError as e:
        raise WriteError(f"cannot write {shown}: {e.strerror or e}") from None
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, **({} if binary else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable (a power cut keeps the new name)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise WriteError(
                f"cannot write {shown}: {_why(e)}; the previous file (if any) is intact"
            ) from None
        raise


def _why(e: OSError) -> str:
    return "disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))


def _is_stream(path: Path) -> bool:
    """``path`` (through links) is an existing device, FIFO or socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.contextmanager
def _stream_open(path: Path, mode: str, encoding: str | None) -> Iterator[IO]:
    try:
        f = open(path, mode, **({} if "b" in mode else {"encoding": encoding}))
    except OSError as e:
        raise WriteError(f"cannot write {path}: {_why(e)}") from None
    try:
        with f:
            yield f
    except OSError as e:
        raise WriteError(f"cannot write {path}: {_why(e)}") from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    # streamed into the file: a run's data_files.json of 175k files was ~20 MB of text, and
    # held whole (with the encoder's pieces) it added ~50 MB to the run's peak RSS
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Add one line to a small log (metrics.jsonl: one line per epoch) by rewriting it
    atomically, so a crash never leaves half a line. A torn last line left by an older,
    non-atomic writer is dropped."""
    path = Path(path)
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as e:
        raise WriteError(f"cannot read {path} to append to it: {e.strerror or e}") from None
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    write_text(path, old + line.rstrip("\n") + "\n")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files that a crash left behind in ``folder`` (``.<name>.*.tmp``, made by
    :func:`atomic_open`). Only call this when no other process writes into ``folder``."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
