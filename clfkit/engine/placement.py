"""Where the training and validation splits live while a run trains: on the training device
when they fit its free memory (batches are then index operations there), else in host memory,
from where each batch is gathered into pinned memory and copied over (clfkit.engine.batches).

The budget is asked of the device itself when the run starts (``torch.cuda.mem_get_info``:
what is free now, other processes' allocations excluded): at most DEVICE_DATA_SHARE of it goes
to data, the rest stays for the model, its activations and the optimizer. A set over the budget
trains from host memory instead of failing with an out-of-memory error at the copy or, worse,
at the first forward pass. ``CLFKIT_DEVICE_DATA_BUDGET`` (bytes, or with K/M/G/T) overrides it,
like ``CLFKIT_MEMORY_BUDGET`` does for host memory (clfkit.data.storage).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from clfkit.data import ImageSet, Splits, storage
from clfkit.errors import ClfkitError
from clfkit.engine.runtime import Runtime

DEVICE_DATA_SHARE = 0.5
DEVICE_BUDGET_ENV = "CLFKIT_DEVICE_DATA_BUDGET"


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
            raise ClfkitError(f"{DEVICE_BUDGET_ENV}={text!r} is not an amount of memory (e.g. 8G, 512M, "
                              f"1000000; unset: {DEVICE_DATA_SHARE:.0%} of the GPU's free memory)") from None
    free = device_free_memory(device)
    return None if free is None else int(free * DEVICE_DATA_SHARE)


def place_splits(splits: Splits, rt: Runtime, on_device: bool) -> Placed:
    """The train and val splits where training reads them. In-memory data goes to the
    training device once (val too: it is evaluated every epoch) when it fits the device's
    budget; per-image CPU augmentation (``on_device`` False), disk storage and a set over the
    budget keep it on the host. File paths stay with the images wherever they go (mistakes.json
    and report.html name the files)."""
    train, val = splits.train, splits.val if splits.val is not None and len(splits.val) else None
    if rt.device.type == "cpu" or not on_device or storage.is_disk(train.images):
        return Placed(train, val)
    movable = [s for s in (train, val) if s is not None and not storage.is_disk(s.images)]
    need = sum(s.images.nbytes + s.labels.nbytes for s in movable)
    budget = device_data_budget(rt.device)
    if budget is not None and need > budget:
        return Placed(train, val, note=(
            f"data placement: the {_size(need)} of train/val data (images and labels) do not fit the {_size(budget)} data budget "
            f"on {rt.device} ({_budget_source()}); they stay in host memory and each batch is "
            f"copied over from pinned memory (slower than on-device batches; free GPU memory, "
            f"use smaller images, or set {DEVICE_BUDGET_ENV})"))
    keep_val = val is None or storage.is_disk(val.images)  # a disk val split is read from its file
    return Placed(_moved(train, rt.device), val if keep_val else _moved(val, rt.device))


def _moved(data: ImageSet, device: torch.device) -> ImageSet:
    labels = data.labels.to(device) if data.labels is not None else None
    return ImageSet(data.images.to(device), labels, data.paths)


def _budget_source() -> str:
    if os.environ.get(DEVICE_BUDGET_ENV, "").strip():
        return DEVICE_BUDGET_ENV
    return f"{DEVICE_DATA_SHARE:.0%} of its free memory"


def _size(nbytes: int) -> str:
    if nbytes >= 100e6:
        return f"{nbytes / 1e9:.2f} GB"
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100e3 else f"{nbytes} bytes"
