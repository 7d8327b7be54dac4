"""What a checkpoint captures of the engine beyond the weights: every global generator's state
(:func:`rng_state`) and, mid-epoch, the position and partial sums inside the epoch
(:class:`EpochProgress`). clfkit.run.resume stores them in last.pt and reads them back.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            warnings.warn(
                f"the checkpoint holds {len(cuda)} CUDA generator state(s) but this machine has "
                f"{torch.cuda.device_count()} GPU(s); CUDA random draws will differ from the "
                f"uninterrupted run",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def restore_generator(gen: torch.Generator, state: Optional[torch.Tensor]) -> None:
    """Set ``gen`` to ``state`` when the state is of its kind. A CUDA generator's state is 16
    bytes and a CPU one's 5056: a run checkpointed on one device and resumed on the other keeps
    the freshly seeded ``gen`` (with a warning: its draws differ from the uninterrupted run)."""
    if state is None:
        return
    if state.numel() != gen.get_state().numel():
        warnings.warn(
            f"the checkpoint's augmentation generator is from another device kind (state of "
            f"{state.numel()} bytes, this {gen.device.type} generator's is {gen.get_state().numel()}); "
            f"the rest of this epoch draws its flips and crops afresh",
            stacklevel=2,
        )
        return
    gen.set_state(state)


@dataclass
class EpochProgress:
    """Where this rank stands inside an epoch, and its partial sums so far."""

    batch: int = 0  # batches finished in this epoch (the same on every rank)
    aug_rng: Optional[torch.Tensor] = None  # augmentation generator state after `batch` batches
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    nonfinite: int = 0  # batches skipped for a non-finite loss
    rng: Optional[dict] = None  # global generators at the checkpoint (set on loading)
    lr: Optional[float] = None  # the LR the epoch started with (its metrics row)
