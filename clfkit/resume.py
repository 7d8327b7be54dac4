"""Exact resume: everything a run needs to continue as if it had never stopped.

``last.pt`` holds, besides the weights, the training state under plain keys, all of it
loadable with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts;
no numpy objects, no pickled classes)::

    optimizer, scheduler, scaler      state_dicts
    step                              optimizer steps taken in the run
    epoch                             epochs completed
    in_epoch                          None at an epoch boundary; mid-epoch (a step checkpoint or
                                      an interrupt): {"batch": batches done in the epoch,
                                      "aug_rng": augmentation generator state,
                                      "loss_sum", "correct", "seen", "nonfinite": partial sums}
    rng                               python, numpy, torch, cuda generator states (see rng_state)
    best, history                     best epoch so far and the metrics rows written so far
    extra                             {key: state_dict()} of any other stateful object the
                                      trainer was given (EMA, early stopping, ...)

Why a resumed run matches an uninterrupted one bit for bit (deterministic CPU runs): the
batch order of an epoch is a pure function of (seed, epoch) (``train.epoch_order``), and so
are per-image (albumentations) draws, reseeded per image; a mid-epoch resume skips the
epoch's first ``batch`` batches and restores every generator (global ones and the batched
augmentation generator) to its state at the checkpoint.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from clfkit.errors import ClfkitError
from clfkit.io import remove_stale_temps

RESUME_FORMAT = 1


class ResumeError(ClfkitError):
    """A run folder that cannot be resumed."""


# --------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
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
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            warnings.warn(f"the checkpoint holds {len(cuda)} CUDA generator state(s) but this machine has "
                          f"{torch.cuda.device_count()} GPU(s); CUDA random draws will differ from the "
                          f"uninterrupted run", stacklevel=2)
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


# --------------------------------------------------------------------------- in-epoch position
@dataclass
class EpochProgress:
    """Where a run stands inside an epoch, and the epoch's partial sums so far."""

    batch: int = 0                        # batches finished in this epoch
    aug_rng: Optional[torch.Tensor] = None  # augmentation generator state after `batch` batches
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    nonfinite: int = 0                    # batches skipped for a non-finite loss
    rng: Optional[dict] = None            # global generators after `batch` batches
    lr: Optional[float] = None            # the LR the epoch started with (its metrics row)

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "aug_rng": self.aug_rng, "loss_sum": self.loss_sum,
                "correct": self.correct, "seen": self.seen, "nonfinite": self.nonfinite, "lr": self.lr}

    @classmethod
    def from_dict(cls, d: dict[str, Any], rng: dict) -> "EpochProgress":
        return cls(batch=int(d["batch"]), aug_rng=d.get("aug_rng"), loss_sum=d["loss_sum"],
                   correct=d["correct"], seen=int(d["seen"]), nonfinite=int(d.get("nonfinite", 0)), rng=rng,
                   lr=d.get("lr"))


@dataclass
class Resumed:
    """What :func:`load_resume_state` hands the trainer."""

    run_dir: Path
    state: dict[str, Any]
    epoch: int                           # epochs completed
    progress: Optional[EpochProgress]    # None at an epoch boundary
    history: list[dict] = field(default_factory=list)


def training_state(*, epoch: int, step: int, progress: Optional[EpochProgress], optimizer, scheduler,
                   scaler, best: dict, history: list[dict], extra: dict[str, Any]) -> dict[str, Any]:
    """The resume part of ``last.pt`` (merged with the weights and recipe by the trainer)."""
    best = {k: v for k, v in best.items() if k in ("val_acc", "epoch", "row")}
    return {
        "resume_format": RESUME_FORMAT, "epoch": epoch, "step": step,
        "in_epoch": progress.to_dict() if progress is not None else None,
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(), "best": best, "history": history,
        "extra": {k: obj.state_dict() for k, obj in extra.items()},
    }


def restore(resumed: Resumed, *, model, optimizer, scheduler, scaler, extra: dict[str, Any]) -> None:
    """Load model, optimizer, scheduler, scaler and extra states from a resume checkpoint."""
    s = resumed.state
    model.load_state_dict(s["model"])
    optimizer.load_state_dict(s["optimizer"])
    scheduler.load_state_dict(s["scheduler"])
    if scaler is not None and s.get("scaler") is not None:
        scaler.load_state_dict(s["scaler"])
    saved = s.get("extra") or {}
    for key, obj in extra.items():
        if key in saved:
            obj.load_state_dict(saved[key])
    unknown = sorted(set(saved) - set(extra))
    if unknown:
        warnings.warn(f"last.pt holds state for {unknown}, which this trainer does not use; ignored",
                      stacklevel=2)


def load_resume_state(run_dir: str | Path) -> Resumed:
    """Read ``RUN_DIR/last.pt`` for resuming; every way it can be unusable is a clear error."""
    from clfkit.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume: run folder {run_dir} does not exist")
    last = run_dir / "last.pt"
    if not last.is_file():
        raise ResumeError(f"cannot resume: {run_dir} has no last.pt (the run stopped before its first "
                          f"checkpoint); start it again with `clfkit train RECIPE`")
    state = load_checkpoint(last)
    remove_stale_temps(run_dir)  # half-written files of the crash being resumed from
    if "optimizer" not in state or "rng" not in state:
        raise ResumeError(f"cannot resume: {last} holds weights only, not the training state")
    if state.get("resume_format", 0) > RESUME_FORMAT:
        raise ResumeError(f"cannot resume: {last} was written by a newer clfkit; upgrade clfkit")
    progress = None
    if state.get("in_epoch") is not None:
        progress = EpochProgress.from_dict(state["in_epoch"], state["rng"])
    return Resumed(run_dir, state, int(state["epoch"]), progress, list(state.get("history") or []))


def resume_run(run_dir: str | Path, *, quiet: bool = False):
    """Continue the run in ``run_dir`` from its ``last.pt`` (``clfkit train --resume``)."""
    from clfkit.recipe import validate_recipe
    from clfkit.train import train

    resumed = load_resume_state(run_dir)
    recipe = validate_recipe(resumed.state["recipe"], source=f"{Path(run_dir) / 'last.pt'} recipe")
    epochs = recipe.train.epochs
    if resumed.epoch >= epochs and resumed.progress is None and (Path(run_dir) / "summary.json").is_file():
        raise ResumeError(f"cannot resume: the run in {run_dir} already finished all {epochs} epochs")
    return train(recipe, run_dir=run_dir, quiet=quiet, resume=resumed)
