"""Batches: the epoch's order (a pure function of seed and epoch, which makes resume exact;
shuffled, or class-balanced draws with replacement), the training and evaluation batches of
uint8 data (in memory, or in a split's file with ``data.storage: disk``). What the device then
does to a training batch (augmentation, mixup, layout) is :class:`BatchPrep`, in
clfkit.train.engine.prep."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from clfkit.data import ImageSet, disk_storage as storage
from clfkit.train.engine import distributed
from clfkit.util.heap import release_free_memory

# Disk storage reads an epoch as shuffled chunks of consecutive images, shuffled again within
# windows of chunks: CHUNK_BYTES per chunk, WINDOW_BYTES per window. A window's order is read in
# BLOCKS_PER_WINDOW blocks, each while the previous block trains (at most 3 blocks in memory).
CHUNK_BYTES = 1 << 20
WINDOW_BYTES = 32 << 20
# Half-window blocks: 175k 64x64 images on 2 cores, the epoch's peak RSS 876-893 MB against
# 943-948 MB with whole-window blocks, at the same speed (27.8-31.8k vs 27.6-30.2k images/s);
# the epoch order, and so the batches, are the window's either way.
BLOCKS_PER_WINDOW = 2


class PerImage(torch.utils.data.Dataset):
    """uint8 tensors through albumentations-style per-image transforms (CPU workers)."""

    def __init__(self, data: ImageSet, transforms: list[Any], seed: int = 0):
        self.data, self.transforms, self.seed = data, transforms, seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, item):
        # an image index, or (draw, index) when an image may be drawn twice in an epoch
        # (data.sampler: balanced): each draw is then augmented anew
        key, i = item if isinstance(item, tuple) else (item, item)
        img = augment_image(
            self.data.images[i].permute(1, 2, 0).numpy(), self.transforms, self.seed * 1_000_003 + key
        )
        return torch.from_numpy(img).permute(2, 0, 1), self.data.labels[i]


def augment_image(img: np.ndarray, transforms: list[Any], key: int) -> np.ndarray:
    """An HWC uint8 image through per-image transforms, their random draws seeded by ``key``
    (run seed, epoch and the image's place in it)."""
    for k, t in enumerate(transforms):
        if hasattr(t, "set_random_seed"):
            # albumentations draws from the transform's own generator, seeded from OS
            # entropy: reseed per (run seed, epoch, image, transform) so runs repeat and a
            # resume need not replay the loader, whatever the worker count
            t.set_random_seed(key * 101 + k)
        img = t(image=img)["image"]
    img = np.ascontiguousarray(img)
    return img[:, :, None] if img.ndim == 2 else img


def epoch_order(n: int, seed: int, epoch: int, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The order of epoch ``epoch``: a pure function of (seed, epoch), so a resumed run sees
    exactly the batches an uninterrupted one would. A permutation of the ``n`` images, or with
    per-image ``weights`` (``data.sampler: balanced``) ``n`` draws with replacement in proportion
    to them, from the same (seed, epoch) generator. Drawn on the CPU whatever the device, so a
    run resumes on another device with the same batches."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    if weights is None:
        return torch.randperm(n, generator=gen)
    return torch.multinomial(weights, n, replacement=True, generator=gen)


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image sampling weights 1 / (images of its class): every class is drawn equally often."""
    labels = labels.cpu()
    counts = torch.bincount(labels).double()
    return (1.0 / counts)[labels]


def disk_chunks(row_bytes: int) -> tuple[int, int]:
    """(images per chunk, chunks per window) of a disk split whose images are ``row_bytes``."""
    chunk = max(1, CHUNK_BYTES // row_bytes)
    return chunk, max(1, WINDOW_BYTES // (chunk * row_bytes))


def disk_epoch_order(n: int, seed: int, epoch: int, chunk: int, window: int) -> torch.Tensor:
    """The order of epoch ``epoch`` over a disk split: chunks of ``chunk`` consecutive images
    in shuffled order, the images of each ``window`` chunks shuffled together. Every image once
    per epoch; a pure function of (seed, epoch) like :func:`epoch_order` (resume stays exact),
    and equal to it when the split fits in one window, so a small set trains the same batches
    from disk as from memory."""
    if n <= chunk * window:
        return epoch_order(n, seed, epoch)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    chunks = torch.randperm(math.ceil(n / chunk), generator=g).tolist()
    parts = []
    for w in range(0, len(chunks), window):
        rows = torch.cat([torch.arange(c * chunk, min(n, (c + 1) * chunk)) for c in chunks[w : w + window]])
        parts.append(rows[torch.randperm(len(rows), generator=g)])
    return torch.cat(parts)


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``n`` images. drop_last drops a last partial batch, but never the
    only one (a split smaller than the batch still trains)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def images_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Images an epoch trains on (all ranks together): drop_last's dropped tail not counted."""
    return n - n % batch_size if drop_last and n >= batch_size else n


def train_batches(
    data: ImageSet,
    batch_size: int,
    seed: int,
    epoch: int,
    *,
    drop_last: bool,
    device: torch.device,
    per_image: list[Any],
    workers: int,
    start_batch: int = 0,
    weights: Optional[torch.Tensor] = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches on ``device`` in this epoch's order, from batch
    ``start_batch`` on (a resumed epoch); ``weights``: see :func:`epoch_order`."""
    disk = storage.is_disk(data.images)
    if disk and weights is None:
        order = disk_epoch_order(len(data), seed, epoch, *disk_chunks(data.images.row_bytes))
    else:  # balanced draws from a disk split are random reads: correct, not fast
        order = epoch_order(len(data), seed, epoch, weights)
    order, batch_size = distributed.shard_order(order, batch_size, drop_last)  # DDP: this rank's part
    # the epoch's batches, less those a resumed epoch has already trained on
    order = order[start_batch * batch_size : num_batches(len(order), batch_size, drop_last) * batch_size]
    if per_image:
        items, aug_seed = order.tolist(), seed * 100003 + epoch
        if weights is not None:  # draws with replacement: key each by its place in the epoch (and rank)
            items = [(start_batch * batch_size + k, i) for k, i in enumerate(items)]
            aug_seed = distributed.rank_seed(aug_seed)
        loader = torch.utils.data.DataLoader(
            PerImage(data, per_image, aug_seed),
            batch_size=batch_size,
            sampler=items,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # workers' seeds from (seed, epoch): creating the loader must not draw from the
            # global generator, which a mid-epoch resume has just restored
            generator=torch.Generator().manual_seed(seed * 100003 + epoch + 7),
        )
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    if disk:
        yield from _disk_batches(data, order, batch_size, device)
        return
    order = order.to(data.images.device)
    # a set left in host memory for a GPU run (clfkit.train.engine.placement: over the device's
    # budget) is gathered into pinned memory, so the copy runs asynchronously
    pin = data.images.device.type == "cpu" and device.type == "cuda"
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield (
            gather(data.images, idx, pin).to(device, non_blocking=True),
            gather(data.labels, idx, pin).to(device, non_blocking=True),
        )


def gather(values: torch.Tensor, idx: torch.Tensor, pin: bool) -> torch.Tensor:
    """``values[idx]`` along the first dimension, into pinned host memory when ``pin`` (torch's
    pinned allocator reuses a buffer only once the copies queued from it have finished)."""
    if not pin:
        return values.index_select(0, idx)
    out = torch.empty((len(idx), *values.shape[1:]), dtype=values.dtype, pin_memory=True)
    return torch.index_select(values, 0, idx, out=out)


def _disk_batches(
    data: ImageSet, order: torch.Tensor, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a disk split in ``order``: blocks of about 1 / BLOCKS_PER_WINDOW of a
    window's images (whole batches), each read in runs of consecutive rows into one (pinned,
    for CUDA) buffer by a reader thread while the previous block trains. On the CPU the heap's
    free pages go back to the system once a window (each batch's float temporaries leave
    holes the next cannot reuse: about one batch's worth of fresh pages a batch)."""
    chunk, window = disk_chunks(data.images.row_bytes)
    step = max(1, chunk * window // (batch_size * BLOCKS_PER_WINDOW)) * batch_size
    blocks = [order[i : i + step] for i in range(0, len(order), step)]
    pin = device.type == "cuda"

    # The reader's staging buffer (file order) is its own, reused for every block. The block
    # handed on is a fresh buffer: its batches may still be in use (queued copies from pinned
    # memory, which torch's pinned allocator reuses only once they finish). Measured over a
    # 2 GB file on the CPU: the read path's peak +185 MB with the staging buffer reused, +370 MB
    # with a fresh one per block (heap fragmentation); 48 MB blocks (over glibc's mmap
    # threshold) peak at +140 MB but read 2.5x slower (fresh pages zeroed for every block).
    staging = torch.empty((min(step, len(order)), *data.images.row_shape), dtype=torch.uint8)

    def read(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty((len(idx), *data.images.row_shape), dtype=torch.uint8, pin_memory=pin)
        y = data.labels[idx]
        return data.images.read(idx.numpy(), out=out, staging=staging), (y.pin_memory() if pin else y)

    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(read, blocks[0]) if blocks else None
        for k in range(len(blocks)):
            x, y = pending.result()
            if not pin and k % BLOCKS_PER_WINDOW == 0:
                release_free_memory()
            pending = reader.submit(read, blocks[k + 1]) if k + 1 < len(blocks) else None
            for i in range(0, len(x), batch_size):
                yield (
                    x[i : i + batch_size].to(device, non_blocking=True),
                    y[i : i + batch_size].to(device, non_blocking=True),
                )
    if not pin:
        release_free_memory()  # the last block's: the val pass comes next


def eval_batches(
    data: ImageSet, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(images, labels or None) batches of ``data`` in order, on ``device``. A disk split on
    the CPU gives the heap's free pages back every window's worth of rows, as training does
    per block (see :func:`eval_trim_every`)."""
    trim_every = eval_trim_every(data, batch_size, device)
    for k, i in enumerate(range(0, len(data), batch_size)):
        x = data.images[i : i + batch_size].to(device, non_blocking=True)
        y = data.labels[i : i + batch_size].to(device, non_blocking=True) if data.labels is not None else None
        yield x, y
        if trim_every and (k + 1) % trim_every == 0:
            release_free_memory()


def eval_trim_every(data: ImageSet, batch_size: int, device: torch.device) -> int:
    """Every how many eval batches of ``data`` the heap's free pages go back to the system; 0:
    never (data in memory, or a GPU run, whose batch temporaries are not on the host heap).
    A pass over a disk split on the CPU otherwise grew the heap by about 5 MB a batch of 512
    64x64 images (each batch's float temporaries freed between small allocations that stay):
    +170 MB over 17.5k val images, the peak of a 175k-image run."""
    if not storage.is_disk(data.images) or device.type != "cpu":
        return 0
    return max(1, WINDOW_BYTES // max(1, data.images.row_bytes * batch_size))


@dataclass
class TrainBatches:
    """Where an epoch's training batches come from: :func:`train_batches` with the run's
    fixed settings; only the epoch (and a resumed epoch's first batch) vary."""

    data: ImageSet
    batch_size: int
    seed: int
    drop_last: bool
    device: torch.device
    per_image: list[Any]
    workers: int
    sampler: str = "shuffle"  # data.sampler: shuffle | balanced

    def __post_init__(self):
        self.weights = balanced_weights(self.data.labels) if self.sampler == "balanced" else None

    def __len__(self) -> int:
        return num_batches(len(self.data), self.batch_size, self.drop_last)

    def images_per_epoch(self) -> int:
        """Images one full epoch trains on (what images_per_s counts)."""
        return images_per_epoch(len(self.data), self.batch_size, self.drop_last)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from ``start_batch`` on."""
        return train_batches(
            self.data,
            self.batch_size,
            self.seed,
            epoch,
            drop_last=self.drop_last,
            device=self.device,
            per_image=self.per_image,
            workers=self.workers,
            start_batch=start_batch,
            weights=self.weights,
        )
