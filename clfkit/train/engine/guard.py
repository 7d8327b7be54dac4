"""The NaN/inf guard of the training loss (``train.on_nonfinite``: stop or skip)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from clfkit.train.engine.runtime import Runtime
from clfkit.errors import TrainingError
from clfkit.train.param_groups import base_lr


def checks_each_step(device: torch.device, mode: str) -> bool:
    """Whether the guard reads the loss on the host every step (see NonFiniteGuard); False:
    the deferred check of CUDA's stop mode."""
    return device.type != "cuda" or mode == "skip"


class NonFiniteGuard:
    """Watches the loss for NaN/inf. On the CPU it checks every step (free: no device to wait
    for) and stops at the exact step. On CUDA, reading the loss each step would stall the GPU,
    so in ``stop`` mode the first bad step is recorded on the device and read at the next
    checkpoint or epoch end (the weights of that epoch are not saved; the last good checkpoint
    stays). ``skip`` must decide before the optimizer step, so it reads the loss every step on
    CUDA too: that host sync is the price of skipping."""

    def __init__(self, rt: Runtime, mode: str, epoch: int, optimizer):
        self.rt, self.mode, self.epoch, self.optimizer = rt, mode, epoch, optimizer
        self.skipped = 0
        self.sync_each_step = checks_each_step(rt.device, mode)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)  # CUDA stop mode

    def ok(self, loss: torch.Tensor, step: int, batch: int) -> bool:
        """False: skip this batch. Raises in stop mode when the loss is not finite."""
        if not self.sync_each_step:
            bad = ~torch.isfinite(loss.detach())
            self.first_bad = torch.where(
                bad & (self.first_bad < 0), torch.full_like(self.first_bad, step), self.first_bad
            )
            return True
        value = float(loss.detach())
        if math.isfinite(value):
            return True
        if self.mode == "skip":
            self.skipped += 1
            return False
        raise TrainingError(self.message(step, batch, value))

    def check(self, step: int) -> None:
        """Raise if the device recorded a non-finite loss (CUDA stop mode; one sync)."""
        if not self.sync_each_step:
            first = int(self.first_bad)
            if first >= 0:
                raise TrainingError(self.message(first, None, float("nan")))

    def message(self, step: int, batch: Optional[int], value: float) -> str:
        lr = base_lr(self.optimizer)  # the recipe's lr as scheduled, not one layer's share of it
        where = f"epoch {self.epoch + 1}, step {step}" + (f" (batch {batch} of the epoch)" if batch else "")
        if step <= 1:
            cause = (
                "at the very first step, so the model or loss produces it on fresh weights "
                "(a custom component, or data normalization with std 0)"
            )
        else:
            cause = f"the learning rate ({lr:.3g}) is probably too high"
            if self.rt.precision == "fp16":
                cause += ", or fp16 overflowed (use train.precision: bf16)"
        return (
            f"non-finite training loss ({value}) at {where}: {cause}. Stopped; last.pt keeps the last "
            f"good checkpoint. Lower optim.lr, add warmup or gradient clipping, or set "
            f"train.on_nonfinite: skip to skip such batches"
        )
