"""Runs of raw-pixel samples read as blocks (clfkit.data.raw_runs, issue 25): a streamed epoch
gives exactly the batches of the per-sample path (pixels, labels, keys, order, skips, errors)
for any seed, rank, stream count, shuffle buffer and resume point; bad samples in the middle of
a run and truncated shards behave as they did per sample."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clfkit.errors import DataError

wds = pytest.importorskip("webdataset")


def _npy(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, pixels, allow_pickle=False)
    return out.getvalue()


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_raw_shards(folder: Path, n: int, per_shard: int, bad: dict | None = None) -> str:
    """``n`` 8x8 RGB raw-pixel samples (as clfkit data pack --raw auto writes them: .npy + .cls,
    plain ustar), class i % 3, every pixel distinct; ``bad``: {index: fields to replace}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(
        str(folder / "train-%06d.tar"), maxcount=per_shard, verbose=0, mtime=1_700_000_000
    ) as w:
        for i in range(n):
            sample = {
                "__key__": f"{i:09d}",
                "npy": _npy(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
                "cls": str(i % 3),
            }
            sample.update((bad or {}).get(i, {}))
            w.write({k: v for k, v in sample.items() if v is not None})
    (folder / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    last = (n - 1) // per_shard
    return str(folder / f"train-{{000000..{last:06d}}}.tar")


def _split(pattern: str, shuffle_buffer: int = 16):
    from clfkit.data.shard_source import load_webdataset

    return load_webdataset(
        train=pattern,
        image_size=(8, 8),
        channels=3,
        resize="squash",
        on_error="skip",
        shuffle_buffer=shuffle_buffer,
    ).train


def _epoch(split, fast: bool, monkeypatch, *, seed=0, epoch=0, rank=0, world=1, start=0, batch=8):
    """Every batch dict of one rank's epoch from ``start``, read the fast way or per sample."""
    from clfkit.train.engine import distributed, stream_batches

    monkeypatch.setattr(stream_batches, "FAST_RUNS", fast)
    monkeypatch.setattr(distributed.WORLD, "rank", rank)
    monkeypatch.setattr(distributed.WORLD, "size", world)
    streams, b = stream_batches.rank_plan(
        split.shards.counts, seed, epoch, batch_size=batch, drop_last=False, rank=rank, world=world
    )
    dataset = stream_batches.StreamDataset(split, streams, b, start, [], seed * 100003 + epoch)
    return list(dataset)


def _same(split, monkeypatch, **plan):
    fast, slow = _epoch(split, True, monkeypatch, **plan), _epoch(split, False, monkeypatch, **plan)
    assert len(fast) == len(slow) > 0
    for f, s in zip(fast, slow):
        assert f.keys() == s.keys()
        if "error" in s:
            assert f["error"] == s["error"]
            continue
        assert torch.equal(f["x"], s["x"]) and torch.equal(f["y"], s["y"]), plan
        assert f["keys"] == s["keys"] and f["skipped"] == s["skipped"] and f["stream"] == s["stream"]
    return fast


def test_fast_runs_give_the_per_sample_batches(tmp_path, monkeypatch):
    from clfkit.data import raw_runs
    from clfkit.train.engine import stream_batches

    pattern = write_raw_shards(tmp_path / "s", 300, 70)
    split = _split(pattern)
    used, real = [], raw_runs.runs

    def counted(*args, **kwargs):
        for rows in real(*args, **kwargs):
            used.append(len(rows))
            yield rows

    monkeypatch.setattr(raw_runs, "runs", counted)
    monkeypatch.setattr(raw_runs, "CHUNK_BYTES", 10 * 1024)  # a few rows per read: chunk edges inside runs
    batches = _same(split, monkeypatch)
    assert sum(used) == 300 and sum(len(b["keys"]) for b in batches) == 300, "every sample the fast way"
    for streams in (1, 3):
        monkeypatch.setattr(stream_batches, "STREAMS", streams)
        for seed, epoch, rank, world, start in (
            (0, 0, 0, 1, 0),
            (5, 2, 1, 3, 0),
            (7, 1, 0, 2, 3),
            (1, 0, 2, 3, 5),
        ):
            _same(split, monkeypatch, seed=seed, epoch=epoch, rank=rank, world=world, start=start)
    _same(_split(pattern, shuffle_buffer=1), monkeypatch, start=2)
    from clfkit.train.engine.stream_batches import StreamBatches

    monkeypatch.setattr(stream_batches, "STREAMS", 8)
    got = {}
    for workers in (0, 2):  # read in loader workers: the same batches
        batches = StreamBatches(split, 8, 0, False, torch.device("cpu"), [], workers, keys=[])
        got[workers] = (torch.cat([x for x, _ in batches.epoch(1, start_batch=3)]), batches.keys)
    assert torch.equal(got[0][0], got[2][0]) and got[0][1] == got[2][1] and len(got[0][1]) == 300 - 24


BAD = {
    7: {"cls": "5"},  # outside the classes: skipped
    20: {"cls": "b"},  # a class name, longer labels
    33: {"cls": "zebra"},
    46: {"npy": _npy(np.zeros((4, 16, 3), np.uint8))},  # same bytes, another shape: decoded
    59: {"cls": ""},  # no label
    72: {"npy": _npy(np.zeros((8, 8, 3), np.uint8))[:-5]},  # truncated .npy: another size
    85: {"npy": None, "png": _png(40)},  # a PNG among raw samples
    98: {"npy": None},  # a label with no image
    111: {"json": b"{}"},  # a third member
}


@pytest.mark.parametrize("index", sorted(BAD))
def test_a_bad_sample_in_a_run_is_skipped_or_refused_as_before(tmp_path, monkeypatch, index):
    split = _split(write_raw_shards(tmp_path / "s", 140, 140, bad={index: BAD[index]}))
    for start in (0, 4):
        _same(split, monkeypatch, start=start)
    split.on_error = "fail"
    _same(split, monkeypatch)


def test_keys_out_of_step_between_members_are_read_as_before(tmp_path, monkeypatch):
    """A label member under another key than its image: two samples for the per-sample reader."""
    import tarfile

    pattern = write_raw_shards(tmp_path / "s", 40, 40)
    shard = tmp_path / "s" / "train-000000.tar"
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, data in members:
            if m.name == "000000017.cls":
                m.name = "000000917.cls"
            t.addfile(m, io.BytesIO(data))
    split = _split(pattern)
    _same(split, monkeypatch)


@pytest.mark.parametrize(
    "cut", [3000, 2048 * 20, *(2048 * k + 1100 for k in (8, 16, 20, 24)), 2048 * 40, 2048 * 40 + 100]
)
def test_a_truncated_shard_raises_the_same_error(tmp_path, monkeypatch, cut):
    pattern = write_raw_shards(tmp_path / "s", 80, 40)
    split = _split(pattern)
    _epoch(split, True, monkeypatch)  # the process has checked the whole shard: that must not outlive it
    shard = tmp_path / "s" / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:cut])
    fast = _same(split, monkeypatch)
    assert "error" in fast[-1] and "train-000001.tar" in fast[-1]["error"], "an error, never a short epoch"
    with pytest.raises(DataError):
        from clfkit.train.engine.stream_batches import StreamBatches

        list(StreamBatches(split, 8, 0, False, torch.device("cpu"), [], 0).epoch(0))


def test_in_place_rewrite_with_the_old_mtime_is_checked_again(tmp_path):
    """The rows a process found good are remembered per file as it is; a shard rewritten in place
    with its size, inode and mtime put back (its ctime moves) is checked again, not trusted."""
    import os

    from clfkit.data import raw_runs

    split = _split(write_raw_shards(tmp_path / "s", 12, 12))
    path = split.shards.urls[0]

    def rows(first: int) -> int:
        found = raw_runs.runs(path, first, 12, image_key=None, label_key="cls", decoding=split.decoding)
        return sum(len(r) for r in found)

    assert rows(0) == 12 and rows(6) == 6
    st = os.stat(path)
    data = Path(path).read_bytes()
    at = data.index(b"000000002.cls") + 3  # sample 2's label's header: its checksum fails now
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"5")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_ino, os.stat(path).st_size, os.stat(path).st_mtime_ns) == (
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
    )
    assert rows(6) == 0, "row 2 is bad now: the run is left to the per-sample reader"


def test_samples_past_the_expected_count_are_an_error_both_ways(tmp_path, monkeypatch):
    """A shard holding more samples than the count the epoch was planned with (a stale manifest:
    samples appended inside the tar's padding keep its size): the same error, fast or per sample."""
    split = _split(write_raw_shards(tmp_path / "s", 24, 12))
    split.shards.counts[0] -= 2  # the manifest said 10 for a shard that holds 12
    fast, slow = _epoch(split, True, monkeypatch), _epoch(split, False, monkeypatch)
    errors = [b["error"] for b in fast if "error" in b], [b["error"] for b in slow if "error" in b]
    assert errors[0] == errors[1] and len(errors[0]) == 1, errors
    assert "holds more than the 10 samples" in errors[0][0] and "'000000010' follows them" in errors[0][0]
