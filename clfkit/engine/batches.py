"""Batches: the epoch's order (a pure function of seed and epoch, which makes resume exact;
shuffled, or class-balanced draws with replacement),
the training and evaluation batches of in-memory uint8 data, and :class:`BatchPrep`, the one
device-side step that turns a uint8 batch into the model's input (batched augmentation,
batch regularizers such as mixup, channels_last)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch

from clfkit.data import ImageSet
from clfkit.engine import distributed


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
        img = self.data.images[i].permute(1, 2, 0).numpy()
        for k, t in enumerate(self.transforms):
            if hasattr(t, "set_random_seed"):
                # albumentations draws from the transform's own generator, seeded from OS
                # entropy: reseed per (run seed, epoch, image, transform) so runs repeat and a
                # resume need not replay the loader, whatever the worker count
                t.set_random_seed((self.seed * 1_000_003 + key) * 101 + k)
            img = t(image=img)["image"]
        img = np.ascontiguousarray(img)
        if img.ndim == 2:
            img = img[:, :, None]
        return torch.from_numpy(img).permute(2, 0, 1), self.data.labels[i]


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


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``n`` images. drop_last drops a last partial batch, but never the
    only one (a split smaller than the batch still trains)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def images_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Images an epoch trains on (all ranks together): drop_last's dropped tail not counted."""
    return n - n % batch_size if drop_last and n >= batch_size else n


def train_batches(data: ImageSet, batch_size: int, seed: int, epoch: int, drop_last: bool,
                  device: torch.device, per_image: list[Any], workers: int, start_batch: int = 0,
                  weights: Optional[torch.Tensor] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches on ``device`` in this epoch's order, from batch
    ``start_batch`` on (a resumed epoch); ``weights``: see :func:`epoch_order`."""
    order = epoch_order(len(data), seed, epoch, weights)
    order, batch_size = distributed.shard_order(order, batch_size, drop_last)  # DDP: this rank's part
    # the epoch's batches, less those a resumed epoch has already trained on
    order = order[start_batch * batch_size:num_batches(len(order), batch_size, drop_last) * batch_size]
    if per_image:
        items, aug_seed = order.tolist(), seed * 100003 + epoch
        if weights is not None:  # draws with replacement: key each by its place in the epoch (and rank)
            items = [(start_batch * batch_size + k, i) for k, i in enumerate(items)]
            aug_seed = distributed.rank_seed(aug_seed)
        loader = torch.utils.data.DataLoader(
            PerImage(data, per_image, aug_seed), batch_size=batch_size, sampler=items,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # workers' seeds from (seed, epoch): creating the loader must not draw from the
            # global generator, which a mid-epoch resume has just restored
            generator=torch.Generator().manual_seed(seed * 100003 + epoch + 7))
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    order = order.to(data.images.device)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield (data.images.index_select(0, idx).to(device, non_blocking=True),
               data.labels.index_select(0, idx).to(device, non_blocking=True))


def eval_batches(data: ImageSet, batch_size: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(images, labels or None) batches of ``data`` in order, on ``device``."""
    for i in range(0, len(data), batch_size):
        x = data.images[i:i + batch_size].to(device, non_blocking=True)
        y = data.labels[i:i + batch_size].to(device, non_blocking=True) if data.labels is not None else None
        yield x, y


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
        return train_batches(self.data, self.batch_size, self.seed, epoch, self.drop_last, self.device,
                             self.per_image, self.workers, start_batch=start_batch, weights=self.weights)


@dataclass
class BatchPrep:
    """The device-side preparation of one training batch, in order: uint8 -> float, the batched
    augmentations (drawing from the epoch's generator), the regularizers' ``on_batch`` (mixup,
    cutmix: they may change the targets), channels_last."""

    batched_aug: list[Any]
    on_batch: list[Any]
    num_classes: int
    channels_last: bool

    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 gen: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, training target) of the batch (x, y)."""
        x = x.float()
        for t in self.batched_aug:
            x = t(x, gen)
        target = y
        for r in self.on_batch:
            x, target = r.on_batch(x, target, self.num_classes)
        # one layout step at the end (a no-op when the augmentations already left that layout)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return x, target
