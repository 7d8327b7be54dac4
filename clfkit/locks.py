"""One writer per run folder: an exclusive lock that every command writing into a run folder
(``train``, ``train --resume``, ``eval``) takes first, before it reads or removes anything.

The lock is ``fcntl.flock`` on ``RUN/.clfkit.lock``. The kernel releases it when the holding
process ends, however it ends (``kill -9`` included), so a crash never leaves a stale lock. The
file holds the holder's pid, host, start time and command, for the error the next process gets.
A clean release deletes the file (while still holding the lock); an acquirer that locked a file
which was deleted meanwhile sees that its inode is no longer the path's and tries again.

Under torchrun only rank 0 writes the run folder (the others use private folders), so only
rank 0 (``RANK`` unset or 0) takes the lock. A process may take the same run's lock again
while it holds it (``train --resume`` locks, then the trainer it calls locks again).
"""
from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from clfkit.errors import ClfkitError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".clfkit.lock"
_HELD: dict[str, list] = {}  # resolved run folder -> [fd, depth]: locks this process holds
F = TypeVar("F", bound=Callable[..., Any])


class RunLockedError(ClfkitError):
    """Another process is writing into this run folder."""


class RunLockWarning(UserWarning):
    """The run folder's filesystem does not support locks."""


def _holder_text(lock_path: Path) -> str:
    """What the lock file says about its holder (it may be mid-write: retry briefly)."""
    for _ in range(10):
        try:
            info = json.loads(lock_path.read_text(encoding="utf-8"))
            if isinstance(info, dict) and info.get("pid"):
                return (f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('started', '?')}, "
                        f"running `{info.get('command', '?')}`")
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return "a process whose details could not be read"


def _locked_message(run: Path, lock_path: Path, purpose: str) -> str:
    return (f"cannot {purpose} {run}: another clfkit process is writing into this run folder "
            f"({_holder_text(lock_path)}). Two writers would duplicate metrics and overwrite each other's "
            f"checkpoints. Wait for it to finish, or stop it (Ctrl-C saves last.pt) and then resume with "
            f"`clfkit train --resume {run}`. The lock ({lock_path}) goes away by itself when that process "
            f"ends, even if it is killed")


def _acquire(run: Path, purpose: str) -> int:
    """Open and flock ``run/LOCK_NAME``; returns the fd. Raises RunLockedError when held."""
    lock_path = run / LOCK_NAME
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            from clfkit.io import WriteError

            raise WriteError(f"cannot {purpose} {run}: cannot create its lock file {lock_path}: "
                             f"{e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(_locked_message(run, lock_path, purpose)) from None
        except OSError as e:  # a filesystem without locks (some network mounts)
            warnings.warn(f"cannot lock {run} ({e.strerror or e}): nothing stops a second clfkit process from "
                          f"writing into it at the same time", RunLockWarning, stacklevel=4)
            return fd
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file its holder deleted on release: lock the new one


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join(["clfkit" if i == 0 and a.endswith(("clfkit", "__main__.py")) else a
                                 for i, a in enumerate(sys.argv)])}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


@contextlib.contextmanager
def run_lock(run: str | os.PathLike, purpose: str = "write into") -> Iterator[None]:
    """Hold the exclusive lock of run folder ``run`` (which must exist) for the block.
    ``purpose`` completes "cannot ... RUN" in the error another process gets."""
    run = Path(run)
    if fcntl is None or os.environ.get("RANK", "0") not in ("", "0"):
        yield
        return
    if not run.is_dir():
        from clfkit.runs import RunFolderError

        raise RunFolderError(f"cannot {purpose} {run}: no such run folder")
    key = os.path.realpath(run)
    if key in _HELD:  # this process holds it already
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    fd = _acquire(run, purpose)
    _HELD[key] = [fd, 1]
    try:
        _write_holder(fd)
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(run / LOCK_NAME)  # while still locked: see the module docstring
        os.close(fd)


def holds_run_lock(purpose: str) -> Callable[[F], F]:
    """Decorator: the function's first argument (or ``run_dir=``) is a run folder, locked for
    the whole call."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with run_lock(args[0] if args else kwargs["run_dir"], purpose):
                return fn(*args, **kwargs)
        return locked  # type: ignore[return-value]
    return wrap
