"""A second reading of the larger-than-memory path (issue 15, items 3 and 4): the disk reader
thread, chunk and window edges, short reads and writes, descriptors, offsets past 4 GB, .npy
header versions, and the forked decode pool's failure paths (a crashed worker, no fork,
Ctrl-C, leftovers). Tiny data throughout: 8 px images, a few dozen rows."""

from __future__ import annotations

import os
import signal
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clfkit.data import ImageSet, decode_pool, disk_spill, disk_storage as storage
from clfkit.train.engine import batches, loop
from clfkit.errors import DataError, TrainingError
import fcntl
from conftest import tiny_recipe, write_image_folder
from clfkit.train.build import build_data
from clfkit.data import cache

SIZE = 8
ROW = 3 * SIZE * SIZE
CPU = torch.device("cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


def _disk(tmp_path: Path, x: torch.Tensor, name: str = "x.npy") -> storage.DiskImages:
    np.save(tmp_path / name, x.numpy())
    return storage.DiskImages(tmp_path / name)


def _small_windows(monkeypatch, chunk: int, window: int) -> None:
    monkeypatch.setattr(batches, "CHUNK_BYTES", chunk * ROW)
    monkeypatch.setattr(batches, "WINDOW_BYTES", window * chunk * ROW)


_THREADS_BEFORE: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _threads_before():
    """The threads alive before each test: a reader left by another test is not this one's."""
    _THREADS_BEFORE.clear()
    _THREADS_BEFORE.update(threading.enumerate())


def _reader_threads() -> list[threading.Thread]:
    """Executor threads (the disk reader's) started by this test and still alive."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("ThreadPoolExecutor") and t not in _THREADS_BEFORE
    ]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------- order and batches at the edges
@pytest.mark.parametrize("n", [1, 4, 5, 19, 20, 21, 40, 41])
def test_disk_order_is_every_row_once_at_chunk_and_window_edges(n):
    chunk, window = 5, 2  # 10 rows a window: n below a chunk, exact multiples, one over
    order = batches.disk_epoch_order(n, 1, 0, chunk, window)
    assert sorted(order.tolist()) == list(range(n))


@pytest.mark.parametrize(
    "n,batch,drop_last,start",
    [
        (23, 4, False, 0),
        (23, 4, True, 0),
        (20, 4, True, 0),
        (3, 8, True, 0),
        (23, 4, False, 3),
        (40, 10, False, 4),
        (23, 4, False, 6),  # start_batch at the epoch's end: nothing left
        (23, 2, False, 0),
        (24, 3, True, 1),  # blocks of several batches (6 rows a window)
    ],
)
def test_disk_batches_are_the_order_rows_whole(tmp_path, monkeypatch, n, batch, drop_last, start):
    """Blocks straddle windows and end in a partial batch; each batch is the order's rows."""
    _small_windows(monkeypatch, chunk=3, window=2)
    x = _images(n)
    data = ImageSet(_disk(tmp_path, x), torch.arange(n))
    got = list(
        batches.train_batches(
            data, batch, 7, 1, drop_last=drop_last, device=CPU, per_image=[], workers=0, start_batch=start
        )
    )
    order = batches.disk_epoch_order(n, 7, 1, *batches.disk_chunks(ROW))
    total = batches.num_batches(n, batch, drop_last)
    assert len(got) == max(0, total - start)
    want = order[start * batch : total * batch]
    if got:
        assert torch.equal(torch.cat([b[1] for b in got]), want)
        assert torch.equal(torch.cat([b[0] for b in got]), x[want])
    assert not _reader_threads()


# --------------------------------------------------------------------------- the reader thread
def test_a_read_error_in_the_reader_thread_surfaces_as_a_data_error(tmp_path, monkeypatch):
    _small_windows(monkeypatch, chunk=2, window=2)
    data = ImageSet(_disk(tmp_path, _images(30)), torch.arange(30))
    with open(data.images.path, "r+b") as f:  # cut the file after the header and 10 rows
        f.truncate(data.images.offset + 10 * ROW)
    with pytest.raises(DataError, match=r"x\.npy ended early"):
        for _ in batches.train_batches(data, 4, 0, 0, drop_last=False, device=CPU, per_image=[], workers=0):
            pass
    assert not _reader_threads()


@pytest.mark.parametrize("failure", ["io-error", "file-removed"])
def test_an_os_error_while_reading_is_a_data_error_naming_the_file(tmp_path, monkeypatch, failure):
    """A disk error (EIO) or a split file removed under the run reaches the CLI as one
    clfkit error naming the file, not an OSError traceback from the reader thread."""
    import errno

    _small_windows(monkeypatch, chunk=2, window=2)
    data = ImageSet(_disk(tmp_path, _images(30)), torch.arange(30))
    if failure == "io-error":

        def eio(*_):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "preadv", eio)
        problem = "Input/output error"
    else:
        os.unlink(data.images.path)
        problem = "No such file"
    with pytest.raises(DataError, match=rf"x\.npy.*{problem}"):
        for _ in batches.train_batches(data, 4, 0, 0, drop_last=False, device=CPU, per_image=[], workers=0):
            pass
    with pytest.raises(DataError, match=rf"x\.npy.*{problem}"):
        next(batches.eval_batches(data, 4, CPU))
    assert not _reader_threads()


def test_breaking_out_of_an_epoch_stops_the_reader(tmp_path, monkeypatch):
    _small_windows(monkeypatch, chunk=2, window=2)
    data = ImageSet(_disk(tmp_path, _images(40)), torch.arange(40))
    epoch = batches.train_batches(data, 4, 0, 0, drop_last=False, device=CPU, per_image=[], workers=0)
    next(epoch)
    assert len(_reader_threads()) == 1  # the next block is being read
    epoch.close()  # what a for loop's break does
    assert not _reader_threads()


@pytest.mark.parametrize("where", ["train_step", "after_step"])
def test_an_epoch_that_raises_does_not_keep_its_reader(tmp_path, monkeypatch, where):
    """A non-finite stop (in the step) or a stop signal (after it) leaves train_one_epoch by
    an exception, which a notebook keeps (sys.last_exc) with the frames it went through: the
    epoch's generator, its reader thread and two blocks of images must not stay alive with it."""
    _small_windows(monkeypatch, chunk=2, window=2)
    data = ImageSet(_disk(tmp_path, _images(40)), torch.arange(40))
    tb = batches.TrainBatches(data, 4, 0, False, CPU, [], 0)

    def stop(*_, **__):
        raise TrainingError("stopped")

    monkeypatch.setattr(loop, "_start_epoch", lambda *_: None)
    monkeypatch.setattr(loop, "train_step", stop if where == "train_step" else lambda *_, **__: True)
    state = SimpleNamespace(model=torch.nn.Identity(), frozen_norms=[])
    with pytest.raises(TrainingError) as kept:
        loop.train_one_epoch(state, tb, 0, progress=lambda n: None, after_step=stop)
    assert kept.value.__traceback__ is not None  # the frames are still held here
    assert not _reader_threads()


# --------------------------------------------------------------------------- reading and writing the file
def test_short_reads_and_writes_are_completed(tmp_path, monkeypatch):
    x = _images(12)
    d = _disk(tmp_path, x)
    real_preadv, real_pwrite = os.preadv, os.pwrite
    calls = {"read": 0, "write": 0}

    def short_preadv(fd, buffers, offset):
        calls["read"] += 1
        return real_preadv(fd, [memoryview(buffers[0])[:7]], offset)

    def short_pwrite(fd, data, offset):
        calls["write"] += 1
        return real_pwrite(fd, memoryview(data)[:11], offset)

    monkeypatch.setattr(os, "preadv", short_preadv)
    monkeypatch.setattr(os, "pwrite", short_pwrite)
    idx = np.array([5, 0, 0, 11, 3, 4])
    assert torch.equal(d.read(idx), x[idx]) and torch.equal(d[2:9], x[2:9])
    out = decode_pool.Output(12, (3, SIZE, SIZE), tmp_path / "o.npy")
    fd = os.open(out.path, os.O_WRONLY)
    out.write(0, x.numpy(), fd)
    os.close(fd)
    storage.copy_rows(d, idx, tmp_path / "c.npy")
    monkeypatch.setattr(os, "preadv", real_preadv)
    assert np.array_equal(np.load(out.path), x.numpy()) and np.array_equal(
        np.load(tmp_path / "c.npy"), x[idx].numpy()
    )
    assert calls["read"] > 100 and calls["write"] > 100


def test_descriptors_do_not_pile_up_over_epochs_and_evals(tmp_path, monkeypatch):
    _small_windows(monkeypatch, chunk=2, window=2)
    x = _images(30)
    train = ImageSet(_disk(tmp_path, x), torch.arange(30))
    val = train.subset(torch.tensor([3, 1, 4, 15, 9, 2, 6]))

    def epoch_and_eval(train, val, e):
        for _ in batches.train_batches(train, 4, 0, e, drop_last=False, device=CPU, per_image=[], workers=0):
            pass
        for _ in batches.eval_batches(val, 3, CPU):
            pass
        storage.channel_mean_std(val.images)

    epoch_and_eval(train, val, 0)
    before = _open_fds()
    for e in range(1, 30):
        epoch_and_eval(train, val, e)
    assert _open_fds() == before
    del train, val
    assert _open_fds() == before - 2  # the file's descriptor and the subset's


def test_eval_over_a_disk_split_gives_free_heap_back_every_window(tmp_path, monkeypatch):
    """A CPU pass over a disk split trims the heap every window's worth of rows (its batches'
    float temporaries otherwise grew the heap past training's peak); data in memory never;
    a training epoch from disk once a window (read in half-window blocks) and after its last
    block."""
    _small_windows(monkeypatch, chunk=2, window=3)  # 6 rows a window
    trims = []
    monkeypatch.setattr(batches, "release_free_memory", lambda: trims.append(1))
    x = _images(40)
    disk = ImageSet(_disk(tmp_path, x), torch.arange(40))
    assert batches.eval_trim_every(disk, 3, CPU) == 2
    assert batches.eval_trim_every(disk, 8, CPU) == 1
    assert batches.eval_trim_every(disk, 3, torch.device("cuda")) == 0
    assert batches.eval_trim_every(ImageSet(x, torch.arange(40)), 3, CPU) == 0
    got = list(batches.eval_batches(disk, 3, CPU))  # 14 batches
    assert torch.equal(torch.cat([b for b, _ in got]), x) and len(trims) == 7
    trims.clear()
    list(batches.eval_batches(ImageSet(x, torch.arange(40)), 3, CPU))
    assert not trims
    list(batches.train_batches(disk, 3, 0, 0, drop_last=False, device=CPU, per_image=[], workers=0))
    assert len(trims) == 7 + 1  # 40 rows in windows of 6: one per window, one after the last


def test_a_slice_reads_without_indexing_the_whole_file(tmp_path):
    """eval_batches and the statistics slice a split batch by batch: a slice must not build
    an index of every row (8 bytes a row, per batch: quadratic over an epoch of a large set)."""
    rows = 4_000_000
    arr = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.uint8, shape=(rows, 1, 1, 1))
    del arr  # sparse: 4 MB of zeros
    d = storage.DiskImages(tmp_path / "big.npy")
    tracemalloc.start()
    try:
        part = d[rows - 5 : rows - 1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert part.shape == (4, 1, 1, 1) and peak < 1 << 20


def test_offsets_past_4_gb_are_exact(tmp_path):
    rows = (1 << 32) // ROW + 10  # the last rows start beyond 2**32 bytes (a sparse file)
    out = decode_pool.Output(rows, (3, SIZE, SIZE), tmp_path / "big.npy")
    x = _images(3)
    fd = os.open(out.path, os.O_WRONLY)
    try:
        out.write(rows - 3, x.numpy(), fd)
    finally:
        os.close(fd)
    d = storage.DiskImages(out.path)
    assert d.offset + (rows - 3) * ROW > 1 << 32
    assert torch.equal(d.read(np.array([rows - 3, rows - 2, rows - 1])), x)
    assert torch.equal(d[rows - 1], x[2]) and not d[0].any()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_every_npy_header_version_reads(tmp_path, version):
    x = _images(5)
    with open(tmp_path / "v.npy", "wb") as f:
        np.lib.format.write_array(f, x.numpy(), version=version)
    d = storage.DiskImages(tmp_path / "v.npy")
    assert torch.equal(d[:], x) and d.offset == np.load(tmp_path / "v.npy", mmap_mode="r").offset


@pytest.mark.parametrize(
    "array,problem",
    [
        (np.asfortranarray(np.zeros((2, 3, 4, 4), np.uint8)), "expected uint8"),
        (np.zeros((2, 3, 4, 4), ">u2"), "expected uint8"),
        (np.zeros((2, 16), np.uint8), "expected uint8"),
    ],
)
def test_npy_files_of_another_layout_are_refused_by_name(tmp_path, array, problem):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=rf"bad\.npy.*{problem}"):
        storage.DiskImages(tmp_path / "bad.npy")


def test_an_npy_file_shorter_than_its_header_says_is_refused(tmp_path):
    np.save(tmp_path / "cut.npy", _images(4).numpy())
    with open(tmp_path / "cut.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(DataError, match=r"cut\.npy"):
        storage.DiskImages(tmp_path / "cut.npy")


# --------------------------------------------------------------------------- the decode pool
def _pngs(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(np.full((SIZE, SIZE, 3), i, np.uint8)).save(p)
        paths.append(p)
    return paths


def _shm() -> set[str]:
    """Named shared memory of the kinds Python's multiprocessing makes (segments, semaphores);
    other processes' own segments (torch's, other test runs') are not this test's business."""
    return {name for name in os.listdir("/dev/shm") if name.startswith(("psm_", "sem.mp", "mp-", "wnsm_"))}


def _children() -> set[int]:
    """Live or zombie child processes of this one."""
    me, kids = str(os.getpid()), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                kids.add(int(entry))
    return kids


def _in_thread(fn, timeout: float):
    """fn() in a thread; its result, or a failure (not a hung test) after ``timeout``."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s (hung)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_crashed_decode_worker_is_an_error_naming_its_file_not_a_hang(tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 12)
    real = decode_pool.decode_one

    def crash_on_7(path, *args):
        if Path(path).name == "img07.png":
            os._exit(3)  # what a segfault in a decoder or the OOM killer looks like from outside
        return real(path, *args)

    monkeypatch.setattr(decode_pool, "decode_one", crash_on_7)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 2)
    before, shm = _children(), _shm()
    out = decode_pool.Output(12, (3, SIZE, SIZE), tmp_path / "o.npy")
    with pytest.raises(DataError, match=r"img07\.png") as e:
        _in_thread(lambda: decode_pool.decode_into(paths, (SIZE, SIZE), 3, "squash", out, workers=2), 20)
    assert "decode worker process died" in str(e.value) and str(e.value).count(".png") == 1  # that file alone
    assert _children() <= before and _shm() <= shm  # no worker, zombie or segment left


def test_a_crashed_worker_under_the_cache_leaves_no_files(tmp_path, monkeypatch):
    """The decode into a new cache entry's temp folder fails: the partial .npy goes with it."""
    from clfkit.data import cache
    from clfkit.data.class_folders import load_folder

    root = tmp_path / "data"
    for c in ("a", "b"):
        _pngs(root / "train" / c, 4)
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(decode_pool, "POOL_MIN_FILES", 2)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 2)
    monkeypatch.setattr(decode_pool, "default_workers", lambda: 2)
    real = decode_pool.decode_one
    monkeypatch.setattr(
        decode_pool, "decode_one", lambda p, *a: os._exit(9) if Path(p).name == "img02.png" else real(p, *a)
    )
    settings = {"image_size": [SIZE, SIZE], "channels": None, "resize": "squash", "on_error": "skip"}
    with pytest.raises(DataError, match=r"img02\.png"):
        _in_thread(
            lambda: cache.cached(
                "folder",
                {"root": str(root)},
                settings,
                lambda: load_folder(root, (SIZE, SIZE)),
                storage_mode="disk",
            ),
            20,
        )
    assert [p for p in (tmp_path / "cache").rglob("*")] == []


def test_a_worker_outliving_its_parent_exits():
    """kill -9 of the parent leaves its workers blocked on the task pipe forever (measured:
    both still alive 3 s after); each watches its parent and exits when it is gone."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    orphan = ctx.Process(target=decode_pool._exit_with_parent, args=(-1, 0.01))  # -1: never its parent
    kept = ctx.Process(target=decode_pool._exit_with_parent, args=(os.getpid(), 0.01))
    orphan.start(), kept.start()
    orphan.join(5)
    time.sleep(0.05)
    try:
        assert orphan.exitcode == 1 and kept.is_alive()
    finally:
        kept.terminate()
        kept.join()


def test_the_pool_leaves_no_process_or_shared_memory_behind(tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 10)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 2)
    shm, kids, fds = _shm(), _children(), _open_fds()
    for to_file in (False, True, True):
        out = decode_pool.Output(10, (3, SIZE, SIZE), tmp_path / "o.npy" if to_file else None)
        results = decode_pool.decode_into(paths, (SIZE, SIZE), 3, "squash", out, workers=2)
        rows = np.load(out.path) if to_file else out.array()
        assert all(r.error is None for r in results) and [int(rows[i, 0, 0, 0]) for i in range(10)] == list(
            range(10)
        )
    assert _shm() <= shm and _children() <= kids and _open_fds() == fds


def test_two_threads_decoding_at_once_each_get_their_own_files(tmp_path, monkeypatch):
    """The pool's job is a module global its forked workers inherit: two decodes at once (two
    trainings in one notebook's threads) must not hand one's files to the other's workers."""
    first, second = _pngs(tmp_path / "a", 6), _pngs(tmp_path / "b", 30)[24:]  # values 0..5 and 24..29
    real = decode_pool.decode_one

    def slow(path, *args):
        time.sleep(0.02)
        return real(path, *args)

    monkeypatch.setattr(decode_pool, "decode_one", slow)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 2)
    outs = [decode_pool.Output(6, (3, SIZE, SIZE)) for _ in range(2)]
    threads = [
        threading.Thread(target=decode_pool.decode_into, args=(paths, (SIZE, SIZE), 3, "squash", out, 2))
        for paths, out in zip((first, second), outs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [int(v) for v in outs[0].array()[:, 0, 0, 0]] == list(range(6))
    assert [int(v) for v in outs[1].array()[:, 0, 0, 0]] == list(range(24, 30))


def test_without_fork_the_decode_runs_in_this_process(tmp_path, monkeypatch):
    """Windows has no fork; the pool's workers inherit their job by fork, so elsewhere the
    decode runs in the calling process (same rows, same results) instead of failing."""
    paths = _pngs(tmp_path / "imgs", 6)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 2)
    monkeypatch.setattr(decode_pool.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    real_context = decode_pool.multiprocessing.get_context

    def no_fork(method=None):
        if method == "fork":
            raise ValueError("cannot find context for 'fork'")
        return real_context(method)

    monkeypatch.setattr(decode_pool.multiprocessing, "get_context", no_fork)
    out = decode_pool.Output(6, (3, SIZE, SIZE))
    results = decode_pool.decode_into(paths, (SIZE, SIZE), 3, "squash", out, workers=2)
    assert all(r.error is None for r in results) and [int(out.array()[i, 0, 0, 0]) for i in range(6)] == list(
        range(6)
    )


def test_ctrl_c_during_the_pool_stops_it_promptly_and_leaves_no_worker(tmp_path, monkeypatch):
    paths = _pngs(tmp_path / "imgs", 40)
    real = decode_pool.decode_one

    def slow(path, *args):
        time.sleep(0.08)
        return real(path, *args)

    monkeypatch.setattr(decode_pool, "decode_one", slow)
    monkeypatch.setattr(decode_pool, "TASK_FILES", 20)  # 1.6 s a task: stopping must not wait for it
    before, shm = _children(), _shm()
    out = decode_pool.Output(40, (3, SIZE, SIZE))
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            decode_pool.decode_into(paths, (SIZE, SIZE), 3, "squash", out, workers=2)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    assert time.perf_counter() - t0 < 0.3 + 0.6
    assert _children() <= before and _shm() <= shm


# --------------------------------------------------------------------------- leftovers of a failed load
def test_a_failed_disk_load_without_the_cache_leaves_no_files(tmp_path):
    """CLFKIT_CACHE=0 (conftest) with data.storage: disk decodes into a private folder; a load
    that fails (data.on_error: fail and a broken file) must not leave its partial .npy there
    until the process exits."""
    from clfkit.data.class_folders import load_folder

    root = tmp_path / "data"
    for c in ("a", "b"):
        _pngs(root / "train" / c, 3)
    (root / "train/b/broken.png").write_bytes(b"not a png")
    parent = tmp_path / "spill"
    with pytest.raises(DataError, match="broken.png"):
        disk_spill.uncached(lambda: load_folder(root, (SIZE, SIZE), on_error="fail"), "disk", parent, print)
    assert [p for p in parent.rglob("*") if p.is_file()] == []


def test_a_private_folder_goes_when_nothing_reads_it_any_more(tmp_path):
    """Runs of one process (a sweep or tune run in-process) each decode an uncached dataset to
    their own private folder: each is deleted once its splits (and views of them) are gone,
    not when the process exits (20 sweep points of a 2 GB set: 40 GB until then)."""
    import gc

    from clfkit.data import Splits

    x = _images(12)
    parent = tmp_path / "spill"

    def load():
        return Splits(train=ImageSet(x.clone(), torch.arange(12) % 2), class_names=["a", "b"])

    splits = disk_spill.uncached(load, "disk", parent, print)
    folder = Path(splits.train.images.path).parent
    val = splits.train.subset(torch.tensor([1, 5, 7]))  # a view keeps the file
    del splits
    gc.collect()
    assert folder.is_dir() and torch.equal(val.images[:], x[[1, 5, 7]])
    del val
    gc.collect()
    assert not folder.exists() and list(parent.iterdir()) == []
    memory = disk_spill.uncached(load, "memory", parent, print)  # nothing written, nothing kept
    assert not storage.is_disk(memory.train.images) and list(parent.iterdir()) == []


# --------------------------------------------------------------------------- the data cache
@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entries(base):
    return sorted(p for p in base.iterdir() if not p.name.startswith("."))


def _folder_recipe(root, **kw):
    return tiny_recipe(
        data__source={"name": "folder", "root": str(root)},
        data__image_size=8,
        data__val_fraction=0.25,
        data__storage="disk",
        **kw,
    )


def test_an_entry_a_disk_run_reads_is_not_deleted_by_a_newer_one(tmp_path, cache_on):
    # before: run A trained from entry E1 (disk storage); the user edited one image and started
    # run B, which wrote E2 and deleted E1: A's loader workers then died with FileNotFoundError
    root = write_image_folder(tmp_path / "data", per_class=4, size=10)
    first = build_data(_folder_recipe(root))
    (e1,) = _entries(cache_on)
    # another process reading E1 (a lock of its own, as a running training holds)
    fd = os.open(e1 / "index.json", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.close(cache._HELD.pop(e1))  # this process is done with it: only the other one holds E1
    try:
        Image.new("RGB", (10, 13), (9, 9, 9)).save(root / "train/cat/cat_0.png")
        second = build_data(_folder_recipe(root))
        assert len(_entries(cache_on)) == 2 and e1.is_dir()
        assert first.train.images[:].shape == second.train.images[:].shape  # E1 still reads
    finally:
        os.close(fd)
    for entry in list(cache._HELD):
        os.close(cache._HELD.pop(entry))
    build_data(_folder_recipe(root))  # a later run (a hit) deletes E1, held by no one now
    assert _entries(cache_on) == [p for p in _entries(cache_on) if p != e1] and not e1.exists()


def test_temp_folders_left_by_a_killed_run_are_removed(tmp_path, monkeypatch):
    # before: kill -9 during the first decode left .<group>-decoding.*.tmp (as large as the
    # decoded data) in the cache dir forever
    stale = tmp_path / ".g-decoding.abc.tmp"
    stale.mkdir()
    (stale / ".train.decoding.npy").write_bytes(b"x" * 100)
    live = disk_spill.locked_temp_folder(tmp_path, ".g-decoding.", ".tmp")  # a running decode's
    fresh = tmp_path / ".g-decoding.new.tmp"  # just made by another process, not locked yet
    fresh.mkdir()
    old = time.time() - 2 * disk_spill.STALE_AFTER_S
    for folder in (stale, live):
        os.utime(folder, (old, old))
    disk_spill._LOCKS.pop(live)  # as if another process held it (its lock stays open)
    disk_spill.remove_stale(tmp_path, ".g-*.tmp")
    assert not stale.exists() and live.is_dir() and fresh.is_dir()
