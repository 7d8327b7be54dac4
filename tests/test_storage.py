"""data.storage (memory | disk | auto) and the parallel first decode (issue 15, items 3 and 4).

Disk storage keeps each split's decoded images in its .npy file and reads shuffled chunks of
it. A split that fits in one read window trains the very batches memory storage does (so the
two give the same run); a larger one trains a different permutation (chunks shuffled, then
images within windows of chunks), which is tested for what must hold: every image once per
epoch, a pure function of (seed, epoch), exact resume.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sigint_at_step, tiny_recipe
from clfkit.data import image_files
from clfkit.train.build import build_data, normalization
from clfkit.data import ImageSet, decode_pool, disk_storage as storage
from clfkit.data.class_folders import decode_files, load_folder
from clfkit.train.engine import batches

SIZE = 8


def _images(n=40, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8))


def _disk(tmp_path, x: torch.Tensor) -> storage.DiskImages:
    np.save(tmp_path / "x.npy", x.numpy())
    return storage.DiskImages(tmp_path / "x.npy")


def _sideways_jpeg(path):
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:, :16], stored[:, 16:] = (250, 20, 20), (20, 20, 250)
    exif = Image.Exif()
    exif[image_files.EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())


def _mixed_folder(root, per_class=6, gray=False):
    """Two classes of PNGs (RGB, or grayscale/palette), a sideways EXIF JPEG, a truncated PNG,
    an empty file and a text file named .png, plus an unlabelled test folder."""
    rng = np.random.default_rng(1)
    for k, c in enumerate(("cat", "dog")):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)
            img = Image.fromarray(arr[..., 0] if gray else arr)
            (img.convert("P") if gray and i % 2 else img).save(d / f"{c}{i}.png")
    if not gray:
        _sideways_jpeg(root / "train/cat/photo.jpg")
    good = (root / "train/cat/cat0.png").read_bytes()
    (root / "train/dog/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train/dog/empty.png").write_bytes(b"")
    (root / "train/dog/text.png").write_text("not an image")
    (root / "test").mkdir()
    Image.fromarray(rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)).save(root / "test/t.png")
    return root


# --------------------------------------------------------------------------- parallel decode
@pytest.mark.parametrize("to_file", [False, True], ids=["shared-memory", "npy-file"])
def test_parallel_decode_is_byte_identical_to_one_process(tmp_path, monkeypatch, to_file):
    root = _mixed_folder(tmp_path / "data")
    paths = sorted(p for p in (root / "train").rglob("*") if p.is_file())
    monkeypatch.setattr(decode_pool, "TASK_FILES", 3)  # several tasks, so the pool really splits
    got = {}
    for workers in (1, 2):
        out = decode_pool.Output(
            len(paths), (3, SIZE, SIZE), tmp_path / f"w{workers}.npy" if to_file else None
        )
        results = decode_pool.decode_into(paths, (SIZE, SIZE), 3, "squash", out, workers=workers)
        arr = np.load(out.path) if to_file else out.array().copy()
        got[workers] = (arr, results)
    (a1, r1), (a2, r2) = got[1], got[2]
    assert np.array_equal(a1, a2) and r1 == r2
    assert sum(r.error is not None for r in r1) == 3  # truncated, empty, text
    # and what the thread decoder (csv datasets) gives, file by file: EXIF applied the same way
    skipped = []
    old = decode_files(paths, (SIZE, SIZE), 3, resize="squash", on_error="skip", skipped=skipped)
    for k, r in enumerate(old):
        assert (r is None) == (r1[k].error is not None)
        if r is not None:
            assert np.array_equal(r[0].transpose(2, 0, 1), a1[k]) and r[1] == r1[k].gray
    photo = a1[[p.name for p in paths].index("photo.jpg")]
    assert photo[0, 0].mean() > 200 and photo[2, 0].mean() < 60  # upright: red on top


@pytest.mark.parametrize("gray", [False, True], ids=["rgb", "grayscale"])
def test_folder_decoded_to_disk_equals_memory(tmp_path, gray):
    root = _mixed_folder(tmp_path / "data", gray=gray)
    mem = load_folder(root, (SIZE, SIZE))
    (tmp_path / "entry").mkdir()
    with storage.decode_target(storage.Target("disk", lambda: tmp_path / "entry")):
        disk = load_folder(root, (SIZE, SIZE))
    assert storage.is_disk(disk.train.images) and not storage.is_disk(mem.train.images)
    assert disk.train.images.shape[1] == mem.train.images.shape[1] == (1 if gray else 3)
    assert disk.skipped == mem.skipped and len(mem.skipped) == 3
    assert disk.fingerprint == mem.fingerprint
    for a, b in ((disk.train, mem.train), (disk.test, mem.test)):
        assert torch.equal(a.images[:], b.images) and a.paths == b.paths
    assert torch.equal(disk.train.labels, mem.train.labels)
    assert sorted(p.name for p in (tmp_path / "entry").iterdir()) == ["test.images.npy", "train.images.npy"]


# --------------------------------------------------------------------------- DiskImages
def test_disk_images_read_like_a_tensor(tmp_path):
    x = _images()
    d = _disk(tmp_path, x)
    assert d.shape == x.shape and len(d) == 40 and d.nbytes == x.numel()
    idx = torch.tensor([7, 3, 3, 39, 0, 8])
    assert torch.equal(d[idx], x[idx]) and torch.equal(d[5], x[5]) and torch.equal(d[-1], x[-1])
    assert torch.equal(d[10:20], x[10:20]) and torch.equal(d.index_select(0, idx), x[idx])
    sub = ImageSet(d, torch.arange(40)).subset(torch.tensor([2, 5, 6, 30]))  # the val carve: no read
    assert storage.is_disk(sub.images) and torch.equal(sub.images[:], x[[2, 5, 6, 30]])
    assert torch.equal(sub.images[torch.tensor([3, 0])], x[[30, 2]])
    pinned_like = torch.empty((3, 3, SIZE, SIZE), dtype=torch.uint8)
    assert d.read(np.array([4, 5, 6]), out=pinned_like).data_ptr() == pinned_like.data_ptr()
    assert torch.equal(pinned_like, x[4:7])
    with pytest.raises(IndexError):
        d[40]


def test_streamed_normalization_is_exact_and_the_same_for_both_storages(tmp_path):
    x = _images(300)
    recipe = tiny_recipe()
    mem = normalization(recipe, ImageSet(x, torch.zeros(300, dtype=torch.long)))
    disk = normalization(recipe, ImageSet(_disk(tmp_path, x), torch.zeros(300, dtype=torch.long)))
    small_blocks = storage.channel_mean_std(x, block_bytes=1000)
    ref = x.double().div(255)
    assert mem == disk == small_blocks
    assert np.allclose(mem[0], ref.mean((0, 2, 3)).numpy(), atol=1e-6)
    assert np.allclose(mem[1], ref.std((0, 2, 3)).numpy(), atol=1e-6)


# --------------------------------------------------------------------------- the epoch order and batches
def test_disk_order_is_chunked_shuffled_and_a_pure_function(monkeypatch):
    n, chunk, window = 1000, 10, 4
    a = batches.disk_epoch_order(n, 3, 1, chunk, window)
    assert sorted(a.tolist()) == list(range(n))  # every image once
    assert torch.equal(a, batches.disk_epoch_order(n, 3, 1, chunk, window))
    assert not torch.equal(a, batches.disk_epoch_order(n, 3, 2, chunk, window))
    for w in range(0, n, chunk * window):  # each window holds whole chunks: 4 runs of 10 rows
        rows = a[w : w + chunk * window].sort().values
        assert len(set((rows // chunk).tolist())) == window
    assert not torch.equal(a[:40].sort().values, torch.arange(40))  # chunk order shuffled
    # a split that fits in one window: exactly the memory order
    assert torch.equal(batches.disk_epoch_order(n, 3, 1, chunk, 100), batches.epoch_order(n, 3, 1))


def _epoch(data, epoch=0, start_batch=0, per_image=(), workers=0):
    return list(
        batches.train_batches(
            data,
            8,
            5,
            epoch,
            drop_last=True,
            device=torch.device("cpu"),
            per_image=list(per_image),
            workers=workers,
            start_batch=start_batch,
        )
    )


def test_disk_batches_follow_the_disk_order_and_resume_mid_epoch(tmp_path, monkeypatch):
    x, y = _images(100), torch.arange(100)
    disk = ImageSet(_disk(tmp_path, x), y)
    monkeypatch.setattr(batches, "CHUNK_BYTES", 5 * 192)  # 5 images per chunk
    monkeypatch.setattr(batches, "WINDOW_BYTES", 3 * 5 * 192)  # 3 chunks per window
    got = _epoch(disk, epoch=2)
    order = batches.disk_epoch_order(100, 5, 2, 5, 3)
    assert len(got) == 12  # drop_last: 96 of 100
    assert torch.equal(torch.cat([b[1] for b in got]), order[:96])
    assert torch.equal(torch.cat([b[0] for b in got]), x[order[:96]])
    resumed = _epoch(disk, epoch=2, start_batch=7)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got[7:], resumed, strict=True)
    )
    # per-image augmentation workers read the same file, in the same order
    flip = _HFlip()
    per_image = _epoch(disk, epoch=2, per_image=[flip], workers=1)
    assert torch.equal(torch.cat([b[0] for b in per_image]), x[order[:96]].flip(-1))


class _HFlip:
    def __call__(self, image):
        return {"image": image[:, ::-1]}


def test_small_disk_set_trains_the_memory_batches(tmp_path):
    x, y = _images(60), torch.arange(60)
    mem, disk = _epoch(ImageSet(x, y), 1), _epoch(ImageSet(_disk(tmp_path, x), y), 1)
    assert len(mem) == len(disk) == 7
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(mem, disk))


# --------------------------------------------------------------------------- runs
@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine, two intra-op threads wait on each
    other at every barrier (measured 30x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cache_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("CLFKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _summary(run):
    s = run.summary
    return {k: s[k] for k in ("best_val_acc", "test_acc", "test_loss", "normalize", "confusion")}


def test_disk_and_memory_storage_train_the_same_run(tmp_path, cache_tmp, capsys):
    from clfkit.train.trainer import train

    small = dict(
        data__source={"name": "shapes", "num_classes": 3, "train_size": 96, "val_size": 32, "test_size": 32},
        train__epochs=1,
    )
    mem = train(tiny_recipe(data__storage="memory", **small), tmp_path / "m", quiet=True)
    disk = train(tiny_recipe(data__storage="disk", **small), tmp_path / "d")
    assert "uint8 images on disk" in capsys.readouterr().out
    assert _summary(mem) == _summary(disk)


def test_resume_with_disk_storage_is_exact(tmp_path, cache_tmp, monkeypatch):
    from clfkit.util.signals import Interrupted
    from clfkit.train.trainer import resume_run, train

    monkeypatch.setattr(batches, "CHUNK_BYTES", 4 * 768)  # 16x16x3 images: chunks of 4,
    monkeypatch.setattr(batches, "WINDOW_BYTES", 5 * 4 * 768)  # windows of 20: the chunked order
    recipe = tiny_recipe(
        data__storage="disk",
        data__source={"name": "shapes", "num_classes": 3, "train_size": 160, "val_size": 32, "test_size": 0},
        train__epochs=2,
        train__deterministic=True,
    )
    ref = train(recipe, tmp_path / "ref", quiet=True)
    with pytest.MonkeyPatch.context() as interrupting:  # the chunk sizes stay patched
        sigint_at_step(interrupting, 7)
        with pytest.raises(Interrupted):
            train(recipe, tmp_path / "cut", quiet=True)
    res = resume_run(tmp_path / "cut" / "tiny", quiet=True)
    a, b = (torch.load(r / "last.pt", weights_only=False)["model"] for r in (ref.run_dir, res.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [
        [
            {k: v for k, v in json.loads(line).items() if "seconds" not in k and k != "images_per_s"}
            for line in (r / "metrics.jsonl").read_text().splitlines()
        ]
        for r in (ref.run_dir, res.run_dir)
    ]
    assert rows[0] == rows[1]


# --------------------------------------------------------------------------- the cache entry is the file
def _folder_recipe(root, **kw):
    return tiny_recipe(
        data__source={"name": "folder", "root": str(root)},
        data__image_size=SIZE,
        data__val_fraction=0.25,
        **kw,
    )


def test_auto_picks_disk_above_the_memory_budget(tmp_path, cache_tmp, monkeypatch):
    root = _mixed_folder(tmp_path / "data")
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    monkeypatch.setenv(storage.BUDGET_ENV, "1K")  # 13 images of 3x8x8 = 2.5 KB: over
    over = build_data(_folder_recipe(root))
    assert storage.is_disk(over.train.images) and storage.is_disk(over.val.images)
    assert (
        str(cache_tmp) in over.train.images.path and over.train.images.rows is not None
    )  # val carved, no copy
    monkeypatch.setenv(storage.BUDGET_ENV, "1M")
    under = build_data(_folder_recipe(root))  # a cache hit, read into memory
    assert isinstance(under.train.images, torch.Tensor)
    assert torch.equal(under.train.images, over.train.images[:]) and torch.equal(
        under.val.images, over.val.images[:]
    )
    monkeypatch.setenv(storage.BUDGET_ENV, "lots")
    with pytest.raises(Exception, match=r"CLFKIT_MEMORY_BUDGET='lots' is not an amount of memory \(e.g. 8G"):
        storage.memory_budget()


@pytest.mark.parametrize("damage", ["truncate", "flip-a-byte"])
def test_damaged_disk_entry_is_a_warned_rebuild(tmp_path, cache_tmp, monkeypatch, capsys, damage):
    root = _mixed_folder(tmp_path / "data")
    monkeypatch.setenv("CLFKIT_CACHE", "1")
    first = build_data(_folder_recipe(root, data__storage="disk"))
    expected = first.train.images[:]
    (entry,) = [p for p in cache_tmp.iterdir() if not p.name.startswith(".")]
    npy = entry / "train.images.npy"
    data = bytearray(npy.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    else:
        data[-7] ^= 0xFF  # same size, same header: only the hash can tell
    npy.write_bytes(bytes(data))
    capsys.readouterr()
    again = build_data(_folder_recipe(root, data__storage="disk"))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "damaged" in err and "train.images.npy" in err
    assert torch.equal(again.train.images[:], expected)  # rebuilt: the right pixels, never the damaged ones
    assert (
        storage.DiskImages(npy).data_hash()
        == json.loads((entry / "index.json").read_text())["hashes"]["train.images.npy"]
    )


def test_disk_storage_without_the_cache_uses_a_private_folder(tmp_path, cache_tmp):
    root = _mixed_folder(tmp_path / "data")
    s = build_data(_folder_recipe(root, data__storage="disk"))  # CLFKIT_CACHE=0 (conftest)
    assert storage.is_disk(s.train.images) and "/.clfkit-disk-" in s.train.images.path
    assert not [p for p in cache_tmp.iterdir() if not p.name.startswith(".")]  # no cache entry
    mem = build_data(_folder_recipe(root, data__storage="memory"))
    assert torch.equal(s.train.images[:], mem.train.images) and torch.equal(s.val.labels, mem.val.labels)


def test_disk_full_while_decoding_is_one_warning_and_the_same_data(tmp_path, cache_tmp, monkeypatch, capsys):
    import errno

    root = _mixed_folder(tmp_path / "data")
    monkeypatch.setenv("CLFKIT_CACHE", "1")

    real = os.pwrite

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(decode_pool.os, "pwrite", full)
    capsys.readouterr()
    s = build_data(_folder_recipe(root, data__storage="disk"))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "No space left on device" in err and "into memory" in err
    monkeypatch.setattr(decode_pool.os, "pwrite", real)
    monkeypatch.setenv("CLFKIT_CACHE", "0")
    mem = build_data(_folder_recipe(root, data__storage="memory"))
    assert isinstance(s.train.images, torch.Tensor) and torch.equal(s.train.images, mem.train.images)
    assert not [p for p in cache_tmp.iterdir()]  # no entry, no temp folder left
