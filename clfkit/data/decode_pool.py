"""First decode with every core: worker processes each decode a slice of the files straight
into the shared output (an .npy file on disk, or an anonymous shared memory block), so no
pixel array is pickled back to the parent; only a few bytes per file return (content hash,
grayscale flag, or why the file could not be decoded).

Processes, not threads: PIL releases the GIL inside the decoder, but the per-file Python
around it (open, EXIF, mode conversion, resize call, array) holds it, and with small images
that part dominates. Files are decoded by exactly the code of the single-process path
(:func:`decode_one`), so the two give byte-identical arrays (tests/test_storage.py).

Output rows are file positions: row ``i`` holds file ``i`` as (C, H, W) uint8; a file that
cannot be decoded leaves its row zero and the caller drops it afterwards.

Failures: a worker that dies (a crash inside a decoder, the OOM killer) is a DataError naming
the file it was on, never a wait for a lost task; Ctrl-C stops the workers at once; a worker
whose parent is gone exits. Without fork (Windows) the decode runs in the calling process.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from clfkit.data import image_files
from clfkit.errors import DataError

# Files per task: at least TASK_FILES, and up to TASK_FILES_MAX while every worker still gets
# TASKS_PER_WORKER tasks (the last tasks must not leave cores idle). Each task costs the
# parent's result handling about 0.5 ms, which it takes from the workers on a small machine:
# 20k small PNGs on 2 cores, 64-file tasks 1.33 s (parent 0.33 CPU s), 256-file tasks 1.15 s.
TASK_FILES = 64
TASK_FILES_MAX = 256
TASKS_PER_WORKER = 8
# Below this many files a pool costs more (fork, hand-offs) than it saves.
POOL_MIN_FILES = 512


DIGEST_CHARS = 32  # blake2b, 16 bytes, as hex


@dataclass
class FileResult:
    """What a worker returns per file: the content hash of the bytes it decoded, and either
    the grayscale flag (decoded) or why it could not be decoded."""

    digest: str
    gray: bool = False
    error: Optional[str] = None


class Output:
    """Where decoded rows go: ``rows`` x ``row_shape`` uint8, in an .npy file (``path``, written
    with pwrite: no mapping, so neither the parent's nor a worker's resident memory grows with
    the set) or in anonymous shared memory (``memory``, created before the workers fork)."""

    def __init__(self, rows: int, row_shape: tuple[int, ...], path: Optional[Path] = None):
        self.rows, self.row_shape = rows, tuple(row_shape)
        self.row_bytes = int(np.prod(row_shape))
        self.path, self.memory, self.offset = path, None, 0
        if path is not None:
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(rows, *row_shape))
            self.offset = arr.offset
            del arr  # zero-filled sparse file with its header; rows are written with pwrite
        else:
            self.memory = mmap.mmap(-1, max(1, rows * self.row_bytes))  # MAP_SHARED | MAP_ANONYMOUS

    def array(self) -> np.ndarray:
        """The memory output as (rows, *row_shape) uint8 (a view of the shared block)."""
        return np.frombuffer(self.memory, np.uint8, self.rows * self.row_bytes).reshape(
            self.rows, *self.row_shape
        )

    def write(self, row: int, block: np.ndarray, fd: Optional[int]) -> None:
        """Rows ``row``.. from ``block`` (n, *row_shape) uint8."""
        if fd is None:
            self.array()[row : row + len(block)] = block
            return
        data = memoryview(np.ascontiguousarray(block)).cast("B")
        pos = self.offset + row * self.row_bytes
        while len(data):
            n = os.pwrite(fd, data, pos)
            data, pos = data[n:], pos + n


def decode_one(
    path: Union[str, Path], size: tuple[int, int], channels: int, resize: str
) -> tuple[Optional[np.ndarray], FileResult]:
    """One file -> ((C, H, W) uint8 or None, its FileResult): read and hash the bytes once,
    decode those very bytes (the data cache pairs the hash with these pixels)."""
    try:
        data = image_files.read_file(path)
    except image_files.DecodeError as e:
        return None, FileResult(f"unreadable: {e}", error=str(e))
    digest = hashlib.blake2b(data, digest_size=DIGEST_CHARS // 2).hexdigest()
    try:
        img = image_files.open_image(path, data)
        gray = image_files.is_grayscale(img)
        arr = image_files.decode_image(img, size, channels, resize)
    except image_files.DecodeError as e:
        return None, FileResult(digest, error=str(e))
    return arr.transpose(2, 0, 1), FileResult(digest, gray=gray)


# The job of a pool, set in the parent before the workers fork (they inherit it, nothing of
# it is pickled): (paths, size, channels, resize, output). ``_MARKS[t]`` is 1 + the file task
# ``t``'s worker is decoding, 0 when it is not decoding one: shared memory, so the parent can
# name the file a worker died on (a crash in a decoder, the OOM killer).
_JOB: Optional[tuple] = None
_MARKS: Optional[np.ndarray] = None
_JOB_LOCK = threading.Lock()  # one pool at a time in a process (each uses every core anyway)
_TASK = -1  # in a worker: the task it is running


def _worker_start(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone stops the pool (no traceback
    # from every worker). A worker the pool terminates because another died clears its mark,
    # so the marks left name the file the dead worker was decoding.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _terminated)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """A worker whose parent is gone (kill -9) would wait for tasks forever: the workers
    hold the task pipe's write end too, so it never reads end-of-file."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _terminated(signum, frame) -> None:
    if _TASK >= 0 and _MARKS is not None:
        _MARKS[_TASK] = 0
    os._exit(128 + signum)


def _decode_task(task: tuple[int, int, int]) -> tuple:
    global _TASK
    paths, size, channels, resize, out = _JOB
    _TASK, start, stop = task
    fd = os.open(out.path, os.O_WRONLY) if out.path is not None else None
    try:
        return _pack(
            _decode_range(
                paths,
                start,
                stop,
                size=size,
                channels=channels,
                resize=resize,
                out=out,
                fd=fd,
                mark=_MARKS[_TASK : _TASK + 1],
            )
        )
    finally:
        if fd is not None:
            os.close(fd)
        _MARKS[_TASK], _TASK = 0, -1


def _pack(results: list[FileResult]) -> tuple[str, bytes, dict[int, FileResult]]:
    """A task's results for the trip to the parent: the decoded files' hex digests joined, their
    grayscale flags as bytes, the rest as they are. Pickling 64 small objects per task cost the
    parent more CPU than the result handling is worth on a 2-core machine."""
    ok = [r.error is None and len(r.digest) == DIGEST_CHARS for r in results]
    digests = "".join(r.digest if good else "-" * DIGEST_CHARS for r, good in zip(results, ok))
    return (
        digests,
        bytes(r.gray for r in results),
        {i: r for i, (r, good) in enumerate(zip(results, ok)) if not good},
    )


def _unpack(packed: tuple[str, bytes, dict[int, FileResult]]) -> list[FileResult]:
    digests, gray, others = packed
    return [
        others.get(i) or FileResult(digests[i * DIGEST_CHARS : (i + 1) * DIGEST_CHARS], bool(g))
        for i, g in enumerate(gray)
    ]


def _decode_range(
    paths, start, stop, *, size, channels, resize, out: Output, fd, mark: Optional[np.ndarray] = None
) -> list[FileResult]:
    block = np.zeros((stop - start, *out.row_shape), np.uint8)  # an undecodable file stays zero
    results = []
    for k in range(start, stop):
        if mark is not None:
            mark[0] = k + 1
        arr, res = decode_one(paths[k], size, channels, resize)
        if arr is not None:
            block[k - start] = arr
        results.append(res)
    out.write(start, block, fd)
    return results


def default_workers() -> int:
    """Decode processes: one per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _fork_context():
    """multiprocessing's fork context, or None on a platform without fork (Windows): the
    workers inherit their job and the shared memory by fork, so there the decode runs in the
    calling process."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


def decode_into(
    paths: list, size: tuple[int, int], channels: int, resize: str, out: Output, workers: Optional[int] = None
) -> list[FileResult]:
    """Decode ``paths`` into rows 0.. of ``out`` with ``workers`` processes (None: one per
    core; 1, or fewer than POOL_MIN_FILES files: in this process). Returns per file its
    FileResult, in order. A worker that dies is a DataError naming the file it was on."""
    auto = workers is None
    workers = default_workers() if auto else workers
    per_task = max(TASK_FILES, min(TASK_FILES_MAX, len(paths) // (workers * TASKS_PER_WORKER)))
    spans = [(i, min(i + per_task, len(paths))) for i in range(0, len(paths), per_task)]
    in_daemon = multiprocessing.current_process().daemon  # a daemon (a user's Pool worker) may not fork
    context = None if workers <= 1 or len(spans) <= 1 or in_daemon else _fork_context()
    if context is None or (auto and len(paths) < POOL_MIN_FILES):
        fd = os.open(out.path, os.O_WRONLY) if out.path is not None else None
        try:
            return [
                r
                for s in spans
                for r in _decode_range(paths, *s, size=size, channels=channels, resize=resize, out=out, fd=fd)
            ]
        finally:
            if fd is not None:
                os.close(fd)
    with _JOB_LOCK:  # decodes in two threads at once would share the one job
        return _decode_in_pool(paths, spans, (size, channels, resize, out), context, workers)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold Ctrl-C back while the pool forks its workers (the first submit forks them all): a
    KeyboardInterrupt raised in Python's at-fork hooks is printed and dropped ("Exception
    ignored in _releaseLock"), and the run went on as if Ctrl-C had not been pressed. Held, it
    arrives right after, in plain code, to whatever handler was installed.

    A Python-level handler that only records the signal, not a blocked signal mask: the mask
    is per thread, and in a process with other threads (torch's, a reader thread) the kernel
    hands the signal to one of those, so the main thread raised inside the block anyway.
    Outside the main thread (where handlers cannot be set) nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # this thread, the restored handler, now


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers and wait for them. ``_processes`` is private (Python 3.14
    adds terminate_workers()), hence the getattr: without it the running tasks finish first."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True)  # no cancel_futures: the broken pool fails the pending ones itself


def _decode_in_pool(
    paths: list, spans: list[tuple[int, int]], settings: tuple, context, workers: int
) -> list[FileResult]:
    global _JOB, _MARKS
    marks = np.frombuffer(mmap.mmap(-1, 8 * len(spans)), np.int64)  # zeros, shared with the workers
    _JOB, _MARKS = (paths, *settings), marks
    tasks = [(t, *span) for t, span in enumerate(spans)]
    try:
        # fork: the workers inherit the job and the shared memory; they never touch torch
        with ProcessPoolExecutor(
            min(workers, len(spans)), mp_context=context, initializer=_worker_start, initargs=(os.getpid(),)
        ) as pool:
            # submit, not map: map's cleanup cancels the futures still queued, and Python 3.11's
            # pool then fails in its own thread (InvalidStateError, a traceback after Ctrl-C)
            # when the workers are stopped and it marks every pending future broken
            with _sigint_held():
                futures = [pool.submit(_decode_task, t) for t in tasks]
            try:
                parts = [f.result() for f in futures]
            except BrokenProcessPool:  # a worker died: the pool has stopped the others itself
                raise
            except BaseException:  # Ctrl-C: stop now, not after each worker's task (64 large photos: seconds)
                _stop_workers(pool)
                raise
    except BrokenProcessPool:
        # read once the pool has joined its workers: those it terminated have cleared their marks
        dead = [image_files.escape_path(str(paths[m - 1])) for m in marks.tolist() if m]
        raise DataError(
            f"a decode worker process died while decoding {' or '.join(dead) or 'an image'} "
            f"(a crash in the image decoder on that file, or the process was killed, e.g. for "
            f"lack of memory); move the file out of the dataset and run again"
        ) from None
    finally:
        _JOB, _MARKS = None, None
    return [r for part in parts for r in _unpack(part)]
