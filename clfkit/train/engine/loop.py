"""The training loop: one optimizer step (:func:`train_step`) and one epoch
(:func:`train_one_epoch`), both over one :class:`TrainState`.

Metrics are accumulated on the device and read once per epoch (no host sync inside the step
loop on the GPU path). A half-done epoch continues from an :class:`EpochProgress`
(clfkit.run.resume): the epoch's batches are a pure function of (seed, epoch), so skipping
the first ``batch`` batches and restoring the generators gives the uninterrupted run's steps.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from clfkit.train.engine import distributed
from clfkit.train.engine.batches import TrainBatches
from clfkit.train.engine.prep import BatchPrep
from clfkit.train.engine.guard import NonFiniteGuard
from clfkit.train.engine.runtime import Runtime
from clfkit.errors import TrainingError
from clfkit.train.engine.snapshot import EpochProgress, restore_generator, set_rng_state

# after_step(batch, snapshot): called after every optimizer step with the batches done in the
# epoch; snapshot() (which syncs) captures the epoch's position for a mid-epoch checkpoint
AfterStep = Callable[[int, Callable[[], EpochProgress]], None]


@dataclass
class TrainState:
    """Everything a training step reads or changes. ``model`` is the module the step runs (a
    DDP or compiled wrapper of ``net`` when those are on); ``net`` is the plain model whose
    weights are saved; ``ema`` its averaged copy (clfkit.train.engine.ema) when train.ema is set."""

    rt: Runtime
    model: nn.Module
    net: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LambdaLR, stepped every step
    scaler: Optional[torch.amp.GradScaler]
    prep: BatchPrep
    regularizers: list[Any] = field(default_factory=list)
    on_nonfinite: str = "stop"  # train.on_nonfinite: stop | skip
    ema: Any = None
    frozen_norms: list[nn.Module] = field(
        default_factory=list
    )  # kept in eval mode (clfkit.train.engine.freeze)
    step: int = 0  # optimizer steps taken so far in the run
    warned_probs: bool = False

    @property
    def eval_model(self) -> nn.Module:
        """What val, best.pt and the test use: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.net

    def hooks(self, name: str) -> list[Any]:
        """The regularizers that implement ``name`` (on_loss, before_step, ...)."""
        return [r for r in self.regularizers if hasattr(r, name)]


@dataclass
class EpochSums:
    """One epoch's running sums on the device, its augmentation generator and its guard."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    gen: torch.Generator
    guard: NonFiniteGuard
    seen: int = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> int:
        n = y.shape[0]
        self.loss_sum += loss.detach().float() * n
        self.correct += (out.detach().argmax(1) == y).sum()
        self.seen += n
        return n

    def snapshot(self, batch: int, step: int) -> EpochProgress:
        """This rank's position after ``batch`` batches (one sync): its own sums and generator,
        which each rank restores for itself (clfkit.train.engine.snapshot)."""
        self.guard.check(step)  # never checkpoint weights a non-finite step has touched
        return EpochProgress(
            batch=batch,
            aug_rng=self.gen.get_state(),
            loss_sum=float(self.loss_sum),
            correct=float(self.correct),
            seen=self.seen,
            nonfinite=self.guard.skipped,
        )


def _looks_like_probabilities(out: torch.Tensor) -> bool:
    out = out.detach().float()
    return bool(
        (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3)
    )


def _warn_if_probabilities(state: TrainState, out: torch.Tensor) -> None:
    """The first batch only (one host sync per run): a model ending in softmax trains badly."""
    if state.warned_probs:
        return
    state.warned_probs = True
    if _looks_like_probabilities(out):
        warnings.warn(
            "the model's outputs on the first batch are already probabilities (non-negative, "
            "rows sum to 1): the model probably ends in softmax. clfkit's losses expect raw "
            "logits (cross_entropy applies log-softmax itself, so a second softmax flattens the "
            "gradients and trains badly). Remove the final softmax from the model.",
            stacklevel=4,
        )


def _step(state: TrainState) -> None:
    """The regularizers' before_step (e.g. gradient clipping, on unscaled gradients) and the
    optimizer step, through the GradScaler in fp16; then the schedule."""
    before_step = state.hooks("before_step")
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
    for r in before_step:
        r.before_step(state.model, state.optimizer)
    if state.scaler is not None:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.scheduler.step()
    state.step += 1


def train_step(
    state: TrainState,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    sums: EpochSums,
    batch: int,
    micro: int = 0,
    group: int = 1,
) -> Optional[torch.Tensor]:
    """Micro-batch ``micro`` (0-based) of a group of ``group`` (train.accumulate) on the uint8
    batch (x, y), ``batch`` (1-based) of the epoch: the gradients of the group's mean loss
    accumulate, and the group's last micro-batch takes the optimizer step (group 1: one step
    per batch). Returns the model's output, or None when on_nonfinite=skip skipped the batch
    (a skipped last micro-batch skips its group's step)."""
    x, target = state.prep(x, y, sums.gen)
    with state.rt.autocast():
        out = state.model(x)
        loss = state.loss_fn(out, target)
    for r in state.hooks("on_loss"):
        loss = r.on_loss(loss, state.model)
    _warn_if_probabilities(state, out)
    if micro == 0:
        state.optimizer.zero_grad(set_to_none=True)
    if not sums.guard.ok(loss, state.step + 1, batch):  # on_nonfinite: skip, and this batch's loss is NaN/inf
        return None
    scaled = loss / group if group > 1 else loss
    (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
    if micro == group - 1:
        _step(state)
    sums.add(loss, out, y)
    return out


def _start_epoch(state: TrainState, seed: int, epoch: int, resume_at: Optional[EpochProgress]) -> EpochSums:
    """The epoch's sums and generators, continued from ``resume_at`` when given."""
    rt = state.rt
    sums = EpochSums(
        torch.zeros((), device=rt.device),
        torch.zeros((), device=rt.device),
        torch.Generator(device=rt.device).manual_seed(distributed.rank_seed(seed * 7919 + epoch)),
        NonFiniteGuard(rt, state.on_nonfinite, epoch, state.optimizer),
    )
    if resume_at is not None:
        sums.seen = resume_at.seen
        sums.loss_sum += resume_at.loss_sum
        sums.correct += resume_at.correct
        sums.guard.skipped = resume_at.nonfinite
        set_rng_state(resume_at.rng)  # every generator as it was at the checkpoint
        restore_generator(sums.gen, resume_at.aug_rng)
    return sums


def in_group(batch: int, total: int, accumulate: int) -> tuple[int, int]:
    """(position in its group, the group's size) of the 0-based ``batch`` of ``total``."""
    first = batch - batch % accumulate
    return batch - first, min(accumulate, total - first)


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of ``batches`` micro-batches (what schedules count)."""
    return -(-batches // accumulate)


def train_one_epoch(
    state: TrainState,
    batches: TrainBatches,
    epoch: int,
    *,
    progress: Callable[[int], None],
    resume_at: Optional[EpochProgress] = None,
    after_step: Optional[AfterStep] = None,
    accumulate: int = 1,
) -> dict[str, float]:
    """One pass over the training split. Returns mean loss and accuracy (one host sync), and
    the count of skipped batches under on_nonfinite=skip. ``resume_at``: continue a half-done
    epoch (at an optimizer step); ``after_step``: see :data:`AfterStep`; ``accumulate``:
    micro-batches per optimizer step (train.accumulate; the epoch's last group may be shorter)."""
    state.model.train()
    for m in state.frozen_norms:  # a frozen backbone's BatchNorm statistics stay as they are
        m.eval()
    sums = _start_epoch(state, batches.seed, epoch, resume_at)
    start = resume_at.batch if resume_at is not None else 0
    total = len(batches)
    for i, (x, y) in enumerate(batches.epoch(epoch, start_batch=start), start=start):
        micro, group = in_group(i, total, accumulate)
        if train_step(state, x, y, sums=sums, batch=i + 1, micro=micro, group=group) is None:
            continue
        progress(y.shape[0])
        if after_step is not None and micro == group - 1:
            after_step(i + 1, lambda: sums.snapshot(i + 1, state.step))
    if sums.seen == 0:  # every batch has at least one image (num_batches), so all were skipped
        raise TrainingError(
            f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped "
            f"(train.on_nonfinite: skip); lower optim.lr or check the data and model"
        )
    loss_v, correct_v, seen = distributed.sum_over_ranks(
        sums.loss_sum, sums.correct, sums.seen
    )  # the one sync
    sums.guard.check(state.step)
    if not math.isfinite(loss_v):
        raise TrainingError(sums.guard.message(state.step, None, loss_v))
    row = {"train_loss": loss_v / seen, "train_acc": correct_v / seen}
    if state.on_nonfinite == "skip":
        row["nonfinite_skipped"] = sums.guard.skipped
    return row
