"""Where the training and validation splits live while a run trains: on the training device
when they fit its free memory (batches are then index operations there), else where they are
(host memory, or a disk split's file: clfkit.data.disk_storage), from where each batch is gathered
into pinned memory and copied over (clfkit.train.engine.batches).

The budget is asked of the device itself when the run starts (``torch.cuda.mem_get_info``:
what is free now, other processes' allocations excluded): at most DEVICE_DATA_SHARE of it goes
to data, the rest stays for the model, its activations and the optimizer. A set over the budget
trains from the host instead of failing with an out-of-memory error at the copy or, worse, at
the first forward pass. ``CLFKIT_DEVICE_DATA_BUDGET`` (bytes, or with K/M/G/T) overrides it,
like ``CLFKIT_MEMORY_BUDGET`` does for host memory. The two budgets are separate questions:
``data.storage: auto`` asks host memory whether the decoded set stays in memory or on disk;
this module asks the GPU whether it holds the set, which a disk split can too (read into it
in blocks, once).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from clfkit.data import ImageSet, Splits, disk_storage as storage
from clfkit.train.engine.runtime import Runtime
from clfkit.errors import ClfkitError

DEVICE_DATA_SHARE = 0.5
DEVICE_BUDGET_ENV = "CLFKIT_DEVICE_DATA_BUDGET"
COPY_BLOCK_BYTES = 64 << 20  # a disk split goes to the device in reads of this size


@dataclass
class Placed:
    """The splits where training reads them, and (when it matters) why they are there."""

    train: ImageSet
    val: Optional[ImageSet]
    note: Optional[str] = None  # for the run log: a set kept in host memory, and why

    @property
    def on_device(self) -> bool:
        return self.train.images.device.type != "cpu"


def device_free_memory(device: torch.device) -> Optional[int]:
    """Free bytes on ``device`` now (CUDA: the driver's count), or None where torch cannot tell."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def device_data_budget(device: torch.device) -> Optional[int]:
    """Bytes of data the run may put on ``device`` (see the module doc); None: no limit known."""
    text = os.environ.get(DEVICE_BUDGET_ENV, "").strip()
    if text:
        try:
            return storage.parse_bytes(text)
        except ValueError:
            raise ClfkitError(
                f"{DEVICE_BUDGET_ENV}={text!r} is not an amount of memory (e.g. 8G, 512M, "
                f"1000000; unset: {DEVICE_DATA_SHARE:.0%} of the GPU's free memory)"
            ) from None
    free = device_free_memory(device)
    return None if free is None else int(free * DEVICE_DATA_SHARE)


def place_splits(splits: Splits, rt: Runtime, on_device: bool) -> Placed:
    """The train and val splits where training reads them. The data goes to the training
    device once (val too: it is evaluated every epoch) when it fits the device's budget: from
    memory, or from a disk split's file in blocks (``data.storage`` is about host memory; a
    set too large for it may still fit a large GPU, and is then read once instead of every
    epoch). Per-image CPU augmentation (``on_device`` False) and a set over the budget keep it
    where it is. File paths stay with the images wherever they go (mistakes.json and
    report.html name the files)."""
    train, val = splits.train, splits.val if splits.val is not None and len(splits.val) else None
    if rt.device.type == "cpu" or not on_device or getattr(train, "streamed", False):
        return Placed(train, val)  # a streamed split (webdataset shards) has no whole tensor to move
    need = sum(s.images.nbytes + s.labels.nbytes for s in (train, val) if s is not None)
    budget = device_data_budget(rt.device)
    if budget is not None and need > budget:
        where = "on disk, read in shuffled chunks" if storage.is_disk(train.images) else "in host memory"
        return Placed(
            train,
            val,
            note=(
                f"data placement: the {_size(need)} of train/val data (images and labels) do not fit the "
                f"{_size(budget)} data budget on {rt.device} ({_budget_source()}); they stay {where} and "
                f"each batch is copied over from pinned memory (slower than on-device batches; free GPU "
                f"memory, use smaller images, or set {DEVICE_BUDGET_ENV})"
            ),
        )
    return Placed(_moved(train, rt.device), _moved(val, rt.device) if val is not None else None)


def _moved(data: ImageSet, device: torch.device) -> ImageSet:
    labels = data.labels.to(device) if data.labels is not None else None
    if not storage.is_disk(data.images):
        return ImageSet(data.images.to(device), labels, data.paths)
    # a disk split: read in blocks straight into the device tensor, never whole in host memory
    images = torch.empty(tuple(data.images.shape), dtype=torch.uint8, device=device)
    step = max(1, COPY_BLOCK_BYTES // data.images.row_bytes)
    for i in range(0, len(images), step):
        images[i : i + step].copy_(data.images[i : i + step])
    return ImageSet(images, labels, data.paths)


def _budget_source() -> str:
    if os.environ.get(DEVICE_BUDGET_ENV, "").strip():
        return DEVICE_BUDGET_ENV
    return f"{DEVICE_DATA_SHARE:.0%} of its free memory"


def _size(nbytes: int) -> str:
    if nbytes >= 100e6:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100e3 else f"{nbytes} bytes"
