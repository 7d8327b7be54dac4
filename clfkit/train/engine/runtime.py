"""The runtime of a training run: device, precision (autocast, GradScaler), memory format,
torch.compile, seeding. Asking for what the machine lacks is a clear error here, before any
data is read."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from clfkit.train.engine import distributed
from clfkit.errors import TrainingError


@dataclass
class Runtime:
    """Where and how the run computes: device, precision, memory format."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """autocast for bf16/fp16; a no-op context in fp32 (the one place mixed precision lives)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_runtime(device: str, precision: str, channels_last: Optional[bool]) -> Runtime:
    """Pick device and precision (train.device, train.precision, train.channels_last; "auto"
    and None: what this machine does best); asking for what it lacks is a clear error."""
    chosen = resolve_device(device)
    precision = resolve_precision(precision, chosen)
    channels_last = channels_last if channels_last is not None else chosen.type == "cuda"
    return Runtime(chosen, precision, channels_last)


def resolve_device(want: str) -> torch.device:
    """train.device (auto, cpu, cuda, cuda:N) as a device this machine has."""
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not want.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError(
            f"train.device is {want!r} but no CUDA GPU is available here; use train.device=auto or cpu"
        )
    device = torch.device(want)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise TrainingError(f"train.device {want!r}: only {torch.cuda.device_count()} GPU(s)")
    return device


def resolve_precision(want: str, device: torch.device) -> str:
    """train.precision (auto, fp32, bf16, fp16) on ``device``: auto is bf16 on a GPU that has
    it, else fp32; mixed precision on the CPU is refused (clfkit trains there in fp32)."""
    precision = want
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise TrainingError(
            f"train.precision {precision} needs a CUDA GPU; this run is on the CPU, "
            f"where clfkit trains in fp32 (set train.precision=fp32 or auto)"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError("train.precision bf16: this GPU does not support bfloat16; use fp16")
    return precision


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU: the same on every rank (model init before DDP's broadcast)
    # CUDA: per rank, or every rank would draw the same dropout masks (rank 0 keeps `seed`)
    torch.cuda.manual_seed_all(distributed.rank_seed(seed))
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def place_model(model: nn.Module, rt: Runtime) -> nn.Module:
    """``model`` on the run's device, in channels_last when the runtime uses it."""
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def grad_scaler(rt: Runtime) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 only (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(rt.device.type) if rt.precision == "fp16" else None


def compiled(model: nn.Module, compile_model: bool) -> nn.Module:
    """``torch.compile(model)`` when the recipe asks for it (train.compile)."""
    return torch.compile(model) if compile_model else model
