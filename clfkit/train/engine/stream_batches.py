"""Training batches streamed from WebDataset shards (a :class:`clfkit.data.streamed.StreamedSplit`),
read and decoded in DataLoader workers while the epoch trains; nothing of the split is held
beyond a few batches and a shuffle buffer per stream.

The epoch's plan is a pure function of (seed, epoch, number of ranks), like the in-memory
epoch order (clfkit.train.engine.batches), so resume stays exact and the worker count changes nothing:

- the shards in a shuffled order (seed, epoch), their samples concatenated: positions 0..N-1;
- rank r reads positions [r*m, (r+1)*m): m = N/ranks rounded up (drop_last: whole global
  batches only), the last rank's overshoot wrapping to position 0, as the in-memory order
  pads its last batch, so every rank takes the same number of steps (DDP needs that) and an
  epoch sees every sample once over all ranks (plus that padding);
- a rank's range is cut into STREAMS streams of whole batches; each stream reads its run of
  shards in order through a shuffle buffer (raw bytes, seeded per stream) and decodes what it
  yields; the rank's batches are the streams' batches taken round-robin. DataLoader worker w
  runs the streams j with j % workers == w; the main process puts their batches back in that
  order.

Runs of raw-pixel samples in local shards (``clfkit data pack --raw auto``: a constant member
layout) are read a few MB at a time and checked in numpy (clfkit.data.raw_runs) when the split
has no per-image augmentation: the same samples in the same order, so the shuffle buffer, the
plan and resume are unchanged; a batch of such rows is one join of their pixel bytes. Anything
else (URLs, other samples, a row that does not check) is read and decoded per sample.

Resume mid-epoch: each stream skips the samples of its batches already trained on, read but
not decoded, so the resumed epoch trains exactly the batches an uninterrupted one would (one
exception, documented in docs/data-formats.md: samples skipped as undecodable before the
resume point shift that stream by as many samples).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clfkit.data import image_files, raw_runs
from clfkit.data.shards import is_url, read_shard
from clfkit.data.streamed import StreamedSplit
from clfkit.errors import DataError, SkippedSamples
from clfkit.train.engine import distributed
from clfkit.train.engine.batches import augment_image, images_per_epoch, num_batches

STREAMS = 8  # streams per rank: the unit of reading (and of workers); fixed, so the plan is too
FAST_RUNS = True  # read runs of raw-pixel samples as blocks (clfkit.data.raw_runs); tests compare both ways


@dataclass
class Stream:
    """One stream of a rank's epoch: shard runs (shard index, first, stop) and its batches."""

    index: int
    segments: list[tuple[int, int, int]]
    samples: int
    batches: int
    first_position: int  # its first sample's position in the epoch (augmentation seeds)


def shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(num_shards, generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()


def segments(counts: list[int], order: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Positions [lo, hi) of the epoch (shards in ``order``, wrapping past the end) as runs
    (shard index, first sample, stop)."""
    total, starts, at = sum(counts), [], 0
    for s in order:
        starts.append(at)
        at += counts[s]
    runs: list[tuple[int, int, int]] = []
    pos = lo
    while pos < hi:
        p = pos % total
        k = max(i for i, start in enumerate(starts) if start <= p and counts[order[i]] > 0)
        first = p - starts[k]
        take = min(counts[order[k]] - first, hi - pos)
        runs.append((order[k], first, first + take))
        pos += take
    return runs


def rank_plan(
    counts: list[int], seed: int, epoch: int, *, batch_size: int, drop_last: bool, rank: int, world: int
) -> tuple[list[Stream], int]:
    """(this rank's streams, its per-rank batch size) for the epoch; see the module doc."""
    n, b = sum(counts), batch_size // world
    m = (n // batch_size) * b if drop_last and n >= batch_size else math.ceil(n / world)
    k = math.ceil(m / b)
    order = shard_order(len(counts), seed, epoch)
    p = min(STREAMS, k)
    streams = []
    for j in range(p):
        b0, b1 = j * k // p, (j + 1) * k // p
        lo, hi = rank * m + b0 * b, rank * m + min(b1 * b, m)
        streams.append(Stream(j, segments(counts, order, lo, hi), hi - lo, b1 - b0, lo))
    return streams, b


def round_robin(streams: list[Stream]) -> list[tuple[int, int]]:
    """The rank's batches in epoch order: (stream, its batch), the streams taken in turn."""
    out, i = [], 0
    while True:
        row = [(s.index, i) for s in streams if i < s.batches]
        if not row:
            return out
        out += row
        i += 1


def shuffled(samples: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """WebDataset's shuffle buffer: each sample out is a random one of the last ``size`` in."""
    buf: list[Any] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


class StreamDataset(torch.utils.data.IterableDataset):
    """One rank's epoch from batch ``start`` on, as batch dicts, decoded where it is iterated
    (loader worker w runs the streams j with j % workers == w, in epoch order)."""

    def __init__(
        self,
        split: StreamedSplit,
        streams: list[Stream],
        batch_size: int,
        start: int,
        per_image: list[Any],
        seed: int,
    ):
        self.split, self.streams, self.b, self.start = split, streams, batch_size, start
        self.per_image, self.seed = per_image, seed
        self.order = round_robin(streams)
        self.done = {s.index: 0 for s in streams}  # per stream: its batches a resumed epoch trained
        for j, _ in self.order[:start]:
            self.done[j] += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        mine = {s.index: s for s in self.streams if info is None or s.index % info.num_workers == info.id}
        its = {j: self._batches(s) for j, s in mine.items()}
        try:
            for j, _ in self.order[self.start :]:
                if j in its:
                    yield next(its[j])
        except DataError as e:  # handed to the main process as a message: a loader worker's
            yield {"error": str(e)}  # exception would arrive wrapped in its traceback text

    def _raw(self, stream: Stream) -> Iterator[Any]:
        """(url, raw sample) per sample of the stream's shard runs, in file order: a Sample, or
        from a run of raw-pixel samples in a local shard (clfkit.data.raw_runs, when the split has
        no per-image augmentation) (pixel bytes, class, key) for a sample already known good."""
        shards = self.split.shards
        fast = FAST_RUNS and not self.per_image
        for shard, first, stop in stream.segments:
            url, at = shards.urls[shard], first
            if fast and not is_url(url):
                for rows in raw_runs.runs(
                    url,
                    first,
                    stop,
                    image_key=shards.image_key,
                    label_key=shards.label_key,
                    decoding=self.split.decoding,
                    expected=shards.counts[shard],
                ):
                    at += len(rows)
                    for row in rows:
                        yield url, row
            if at == stop:
                continue
            for sample in read_shard(
                url,
                at,
                stop,
                image_key=shards.image_key,
                label_key=shards.label_key,
                expected=shards.counts[shard],
            ):
                yield url, sample

    def _decoded(self, stream: Stream, raw: Iterator[Any]) -> Iterator[tuple[tuple | None, tuple | None]]:
        """((HWC image, class, key), None) per good sample, (None, (name, why)) per bad one. Past
        the end, the stream is read again from its start (skips made it short): a pass with
        no good sample is an error, never an endless loop."""
        source = raw
        while True:
            got = False
            for url, sample in source:
                if type(sample) is tuple:  # a raw-pixel row, checked good
                    got = True
                    yield sample, None
                    continue
                try:
                    x, y = self.split.decoding(sample)
                except (ValueError, image_files.DecodeError) as e:
                    if self.split.on_error == "fail":
                        raise DataError(
                            f"{url}: sample {sample.key!r}: {e} (set data.on_error: skip to skip "
                            f"such samples)"
                        ) from None
                    yield None, (f"{url}#{sample.key}", str(e))
                    continue
                got = True
                yield (x, y, sample.key), None
            if not got and source is not raw:
                urls = [self.split.shards.urls[s] for s, _, _ in stream.segments]
                raise DataError(f"no readable training sample in shards {urls[:3]}")
            source = self._raw(stream)

    def _batches(self, stream: Stream) -> Iterator[dict[str, Any]]:
        """The stream's batches after those already trained: raw samples through the shuffle
        buffer, the trained part skipped undecoded, the rest decoded (bad ones skipped and
        made up for, so the batch count never changes)."""
        rng = random.Random(f"{self.seed}/{distributed.WORLD.rank}/{stream.index}")
        raw = shuffled(self._raw(stream), self.split.shuffle_buffer, rng)
        skip = self.done[stream.index] * self.b
        for _ in range(skip):
            next(raw, None)
        good = self._decoded(stream, raw)
        position, remaining = stream.first_position + skip, stream.samples - skip
        while remaining > 0:
            xs, ys, keys, skipped = [], [], [], []
            while len(xs) < min(self.b, remaining):
                sample, bad = next(good)
                if bad is not None:
                    skipped.append(bad)
                    continue
                x, y, key = sample
                if type(x) is not bytes:
                    x = augment_image(x, self.per_image, self.seed * 1_000_003 + position + len(xs))
                xs.append(x)
                ys.append(y)
                keys.append(key)
            position, remaining = position + len(xs), remaining - len(xs)
            # NCHW as a view of the NHWC stack (channels_last strides): batch preparation makes
            # the float batch contiguous in the run's layout anyway, and a uint8 permute-copy here
            # was a tenth of a streamed 32 px epoch
            yield {
                "x": torch.from_numpy(self._stack(xs)).permute(0, 3, 1, 2),
                "y": torch.tensor(ys, dtype=torch.int64),
                "keys": keys,
                "skipped": skipped,
                "stream": stream.index,
            }

    def _stack(self, xs: list) -> np.ndarray:
        """(N, H, W, C) uint8 of decoded images and raw-pixel rows (bytes in that shape): rows
        alone are joined in one copy."""
        (h, w), c = self.split.decoding.size, self.split.decoding.channels
        if all(type(x) is bytes for x in xs):
            return np.frombuffer(bytearray().join(xs), np.uint8).reshape(len(xs), h, w, c)
        return np.stack([np.frombuffer(x, np.uint8).reshape(h, w, c) if type(x) is bytes else x for x in xs])


@dataclass
class StreamBatches:
    """:class:`clfkit.train.engine.batches.TrainBatches` for a streamed split: the same questions
    (batches per epoch, images per epoch, an epoch's batches from a start batch) answered by
    streaming. ``keys``, when a list, receives every trained sample's key (tests count them)."""

    data: StreamedSplit
    batch_size: int
    seed: int
    drop_last: bool
    device: torch.device
    per_image: list[Any]
    workers: int
    sampler: str = "shuffle"
    keys: list[str] | None = None

    def __post_init__(self):
        if self.sampler != "shuffle":
            raise DataError(
                f"data.sampler: {self.sampler} draws images by index, which a streamed split "
                f"(WebDataset shards) does not have; use data.sampler: shuffle"
            )

    def __len__(self) -> int:
        return num_batches(len(self.data), self.batch_size, self.drop_last)

    def images_per_epoch(self) -> int:
        return images_per_epoch(len(self.data), self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of epoch ``epoch`` from ``start_batch`` on, in the plan's order."""
        world = distributed.WORLD
        streams, b = rank_plan(
            self.data.shards.counts,
            self.seed,
            epoch,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            rank=world.rank,
            world=world.size,
        )
        dataset = StreamDataset(
            self.data, streams, b, start_batch, self.per_image, self.seed * 100003 + epoch
        )
        workers = min(self.workers, len(streams))
        loader = (
            torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                num_workers=workers,
                prefetch_factor=2,
                pin_memory=self.device.type == "cuda",
                persistent_workers=False,
            )
            if workers
            else dataset
        )
        skipped: list[tuple[str, str]] = []
        try:
            for batch in _in_order(iter(loader), dataset.order[start_batch:]):
                skipped += batch["skipped"]
                if self.keys is not None:
                    self.keys += batch["keys"]
                yield (
                    batch["x"].to(self.device, non_blocking=True),
                    batch["y"].to(self.device, non_blocking=True),
                )
        finally:
            skipped = list(dict(skipped).items())  # a sample met again while making up for skips counts once
            if skipped:
                warnings.warn(
                    SkippedSamples(
                        f"epoch {epoch + 1}: {len(skipped)} training sample(s) skipped and made up for from their "
                        f"stream (first: {skipped[0][0]}: {skipped[0][1]})"
                    ),
                    stacklevel=2,
                )

    def describe(self) -> str:
        return (
            f"{self.data.describe()}, {len(self.data.shards.urls)} shard(s), {STREAMS} streams per rank "
            f"through a {self.data.shuffle_buffer}-sample shuffle buffer each, decoded in "
            f"{min(self.workers, STREAMS)} loader worker(s)"
        )


def _in_order(batches: Iterator[dict[str, Any]], order: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
    """The loader's batches (workers take turns) in the rank's epoch order: (stream, batch)."""
    pending: dict[int, list[dict[str, Any]]] = {}
    for j, _ in order:
        while not pending.get(j):
            batch = next(batches, None)
            if batch is None:
                raise DataError(f"the stream ended before batch {j} of the epoch's plan")
            if "error" in batch:
                raise DataError(batch["error"])
            pending.setdefault(batch["stream"], []).append(batch)
        yield pending[j].pop(0)


def train_batches_for(
    data,
    batch_size: int,
    seed: int,
    *,
    drop_last: bool,
    device: torch.device,
    per_image: list[Any],
    workers: int,
    sampler: str = "shuffle",
):
    """TrainBatches for in-memory or disk data, StreamBatches for a streamed split."""
    from clfkit.data.streamed import is_streamed
    from clfkit.train.engine.batches import TrainBatches

    cls = StreamBatches if is_streamed(data) else TrainBatches
    return cls(data, batch_size, seed, drop_last, device, per_image, workers, sampler)
