"""``clfkit lr-find RECIPE``: the learning-rate range test (Smith 2017; fastai's ``lr_find``,
Lightning's ``Tuner.lr_find``).

A fresh model of the recipe trains for up to ``steps`` optimizer steps while the LR grows
exponentially from ``start_lr`` to ``end_lr``; the loss of each step is smoothed with an
exponential moving average (beta 0.98, bias-corrected, as fastai does) and the test stops when
the smoothed loss exceeds ``DIVERGE`` (4) times its minimum, or is not finite. The suggested LR
is the one where the smoothed loss falls fastest (the steepest negative slope against log LR,
Lightning's default), looked for after the first tenth of the steps and up to the minimum; the
LR of the minimum divided by 10 (fastai's older rule) is reported beside it.

The LR is the recipe's ``optim.lr`` (param groups keep their ratios: head_lr_mult,
layer_decay). Each step is the trainer's own (clfkit.train.engine.loop.train_step): batch size and
``train.accumulate`` (one LR per optimizer step, its loss the mean over the micro-batches),
precision and its GradScaler, the regularizers' hooks (gradient clipping, mixup, ...), and a
``train.freeze`` backbone frozen as in the first epoch. A loss that is not finite on the first
step is an error (no LR is to blame); later, it ends the test like a diverging loss.

Nothing is written but the plot: no run folder, no checkpoint. The plot goes
where ``out`` says (default ``lr_find_<recipe name>.png`` in the current folder), and an
existing file there is replaced only when it is a PNG.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clfkit.util.atomic import write_bytes
from clfkit.train.build import (
    build_augmentations,
    build_data,
    build_loss,
    build_model,
    build_optimizer,
    build_regularizers,
)
from clfkit.train.engine.freeze import frozen_in_epoch, set_backbone_frozen
from clfkit.train.engine.guard import NonFiniteGuard
from clfkit.train.engine.loop import EpochSums, TrainState, in_group, train_step
from clfkit.train.engine.prep import BatchPrep
from clfkit.train.engine.runtime import (
    grad_scaler,
    place_model,
    resolve_runtime,
    seed_everything,
)
from clfkit.train.engine.stream_batches import train_batches_for
from clfkit.errors import LRFindError
from clfkit.train.param_groups import base_lr
from clfkit.recipe import Recipe
from clfkit.train.init_weights import input_normalization, load_init
from clfkit.run.reader import is_run

BETA = 0.98  # the loss's moving average
DIVERGE = 4.0  # stop once the smoothed loss is this many times its minimum
STEPS = (10, 10_000)  # --steps: fewer find no descent; more is a typo (fastai and Lightning take 100)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class LRFindResult:
    plot: Path
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # each step's loss
    smoothed: list[float] = field(default_factory=list)  # the bias-corrected moving average
    suggested: float | None = None  # steepest descent of the smoothed loss
    min_over_10: float | None = None  # the LR of the lowest smoothed loss / 10
    stopped: str = ""  # why the test ended before end_lr, if it did
    settings: str = ""  # the training settings its steps follow

    def lines(self) -> list[str]:
        """What the CLI prints: the range, why it stopped, the suggestion, the plot."""
        out = [
            f"{len(self.lrs)} steps, lr {self.lrs[0]:.2e} to {self.lrs[-1]:.2e}"
            if self.lrs
            else "no step finished"
        ]
        out += [self.settings] if self.settings else []
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        if self.min_over_10 is None:
            out.append(
                f"no suggestion: {len(self.lrs)} step(s) before the test ended are too few to find a descent; "
                f"raise --steps, or lower --end-lr when the loss diverged"
            )
        elif self.suggested is None:
            out.append(
                "no suggestion: the loss was lowest within the first tenth of the steps (no descent to find); "
                "lower --start-lr"
                + (f". The minimum / 10: {self.min_over_10:.2e}" if self.min_over_10 else "")
            )
        else:
            out.append(
                f"suggested lr: {self.suggested:.2e} (steepest descent of the smoothed loss); the minimum / 10: "
                f"{self.min_over_10:.2e}. Try: --set optim.lr={self.suggested:.2e}"
            )
        return out + [f"wrote {self.plot}"]


def plot_path(recipe: Recipe, out: str | Path | None) -> Path:
    """Where the plot goes; an LRFindError for a place that would overwrite a file that is not a
    PNG plot, lies in a run folder, or whose folder does not exist."""
    path = Path(out) if out is not None else Path(f"lr_find_{recipe.name}.png")
    if path.is_dir():
        path = path / f"lr_find_{recipe.name}.png"
    if path.suffix.lower() != ".png":
        raise LRFindError(f"-o {path}: the plot is a PNG; give a file name ending in .png")
    if not path.parent.is_dir():
        raise LRFindError(f"-o {path}: the folder {path.parent} does not exist")
    if is_run(path.parent):
        raise LRFindError(
            f"-o {path}: {path.parent} is a run folder, and lr-find writes nothing into run "
            f"folders; give a path outside it"
        )
    if path.exists():
        try:
            with path.open("rb") as f:
                is_png = f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        except OSError as e:
            raise LRFindError(f"-o {path}: cannot read the file there ({e.strerror})") from None
        if not is_png:
            raise LRFindError(
                f"-o {path} exists and is not a PNG image; lr-find replaces only an earlier plot. "
                f"Give another name"
            )
    return path


def suggestions(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """(steepest descent LR, LR of the minimum / 10), both past the first tenth of the steps; None
    where there are too few points to say. The steepest descent is looked for between the first tenth of the steps and the minimum: past
    the minimum the loss is diverging, and its swings there are no descent."""
    skip = max(1, len(lrs) // 10)  # the first steps: the moving average has seen too few losses
    if len(lrs) < skip + 3:
        return None, None
    lowest = skip + int(np.argmin(smoothed[skip:]))
    if lowest - skip < 2:
        return None, float(lrs[lowest]) / 10
    x, y = np.log10(lrs[skip : lowest + 1]), np.array(smoothed[skip : lowest + 1])
    slope = np.gradient(y, x)[:-1]  # not the minimum itself (a one-sided difference there)
    return float(lrs[skip + int(np.argmin(slope))]), float(lrs[lowest]) / 10


def lr_find(
    recipe: Recipe,
    out: str | Path | None = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    log: Callable[[str], None] = print,
) -> LRFindResult:
    """Run the range test on ``recipe`` and write its plot; see the module docstring."""
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise LRFindError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need 0 < start < end")
    if not STEPS[0] <= steps <= STEPS[1]:
        raise LRFindError(
            f"--steps {steps}: give {STEPS[0]} to {STEPS[1]:,} optimizer steps (100 is the usual)"
        )
    path = plot_path(recipe, out)  # before any data is read: a bad -o fails at once
    result = LRFindResult(path)
    _range_test(recipe, result, start_lr, end_lr, steps)
    result.suggested, result.min_over_10 = suggestions(result.lrs, result.smoothed)
    _plot(result, recipe.name)
    return result


def _setup(recipe: Recipe) -> tuple[TrainState, Any, Any]:
    """(the training state a run of ``recipe`` starts from, its train batches, its splits): the
    trainer's model, loss, optimizer, GradScaler, augmentation and regularizer hooks."""
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    seed_everything(recipe.seed, recipe.train.deterministic)
    splits = build_data(recipe)
    mean, std, _ = input_normalization(recipe, splits.train)
    model = build_model(recipe, splits.num_classes, splits.in_chans, splits.image_size, mean, std)
    if recipe.init:
        load_init(model, recipe.init, recipe.init_min_match, splits.class_names)
    regularizers = build_regularizers(recipe)
    for r in regularizers:
        if hasattr(r, "on_model"):
            model = r.on_model(model) or model
    model = place_model(model, rt)
    optimizer = build_optimizer(recipe, model, regularizers)
    per_image, batched = build_augmentations(recipe)
    prep = BatchPrep(
        batched, [r for r in regularizers if hasattr(r, "on_batch")], splits.num_classes, rt.channels_last
    )
    loss_fn = build_loss(recipe, splits.num_classes, splits).to(rt.device)
    # on_nonfinite "skip": a NaN/inf loss returns None from train_step, and the test ends there
    state = TrainState(
        rt=rt,
        model=model,
        net=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=None,
        scaler=grad_scaler(rt),
        prep=prep,
        regularizers=regularizers,
        on_nonfinite="skip",
    )
    tc, workers = recipe.train, recipe.data.workers if recipe.data.workers is not None else 0
    batches = train_batches_for(
        splits.train,
        tc.batch_size,
        recipe.seed,
        drop_last=tc.drop_last,
        device=rt.device,
        per_image=per_image,
        workers=workers,
        sampler=recipe.data.sampler,
    )
    return state, batches, splits


def as_trained(recipe: Recipe, precision: str) -> str:
    """The training settings the test's steps follow (``precision``: as resolved on this machine)."""
    tc = recipe.train
    hooks = [str(r.get("name", "?")) for r in recipe.regularizers]
    return (
        f"each step as in training: batch {tc.batch_size}"
        + (f" x accumulate {tc.accumulate}" if tc.accumulate > 1 else "")
        + f", precision {precision}"
        + (f", regularizers {', '.join(hooks)}" if hooks else "")
        + (
            ", backbone frozen as in epoch 1 (train.freeze)"
            if frozen_in_epoch(tc.freeze, tc.unfreeze_epoch, 0)
            else ""
        )
    )


def _range_test(recipe: Recipe, result: LRFindResult, start_lr: float, end_lr: float, steps: int) -> None:
    """Optimizer steps of the recipe's own training step (clfkit.train.engine.loop.train_step: its
    accumulation, gradient clipping and other hooks, GradScaler, frozen backbone) while a LambdaLR
    ramps the LR; every loop ends: each epoch takes a step or raises, and steps are counted."""
    state, batches, splits = _setup(recipe)
    result.settings = as_trained(recipe, state.rt.precision)
    base = base_lr(state.optimizer)  # the groups keep their ratios (lr_scale) to the recipe's LR

    def ramp(step: int) -> float:
        return start_lr * (end_lr / start_lr) ** (min(step, steps - 1) / max(steps - 1, 1)) / base

    state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, ramp)
    epoch = 0
    while len(result.lrs) < steps and _epoch(recipe, state, batches, epoch, result, steps):
        epoch += 1
    if not result.lrs and not result.stopped:
        raise LRFindError(
            f"the train split gave no batch: {len(splits.train)} image(s), train.batch_size "
            f"{recipe.train.batch_size}, drop_last {recipe.train.drop_last}; give it more images or "
            f"a smaller batch" + _kept(result.plot)
        )


def _epoch(
    recipe: Recipe, state: TrainState, batches: Any, epoch: int, result: LRFindResult, steps: int
) -> bool:
    """One pass over the train batches; False once the test is over (or the epoch gave no step)."""
    tc = recipe.train
    if tc.freeze:  # as the trainer does: a function of the epoch
        state.frozen_norms = set_backbone_frozen(
            getattr(state.net, "net", state.net), frozen_in_epoch(tc.freeze, tc.unfreeze_epoch, epoch)
        )
    state.model.train()
    for m in state.frozen_norms:
        m.eval()
    rt = state.rt
    sums = EpochSums(
        torch.zeros((), device=rt.device),
        torch.zeros((), device=rt.device),
        torch.Generator(device=rt.device).manual_seed(recipe.seed * 7919 + epoch),
        NonFiniteGuard(rt, "skip", epoch, state.optimizer),
    )
    total, stepped, loss_before, seen_before = len(batches), False, 0.0, 0
    for i, (x, y) in enumerate(batches.epoch(epoch)):
        micro, group = in_group(i, total, tc.accumulate)
        lr = base_lr(state.optimizer)  # the LR this step uses (the schedule moves after it)
        if train_step(state, x, y, sums=sums, batch=i + 1, micro=micro, group=group) is None:
            _not_finite(result, lr)
            return False
        if micro < group - 1:
            continue
        loss_now = float(sums.loss_sum)  # one host sync per step: the test's whole point is this number
        stepped = _record(result, lr, (loss_now - loss_before) / max(sums.seen - seen_before, 1))
        loss_before, seen_before = loss_now, sums.seen
        if result.stopped or len(result.lrs) >= steps:
            return False
    return stepped


def _record(result: LRFindResult, lr: float, value: float) -> bool:
    """Add one step's loss; sets ``result.stopped`` once the smoothed loss diverges (or the
    step's mean loss overflowed: it is then left out, so the plot's scale stays finite)."""
    if not math.isfinite(value):
        _not_finite(result, lr)
        return bool(result.lrs)
    i = len(result.lrs)
    avg = result.smoothed[-1] * (1 - BETA**i) if i else 0.0  # the moving average before bias correction
    avg = BETA * avg + (1 - BETA) * value
    smooth = avg / (1 - BETA ** (i + 1))
    result.lrs.append(lr)
    result.losses.append(value)
    result.smoothed.append(smooth)
    if smooth > DIVERGE * min(result.smoothed):
        result.stopped = f"the smoothed loss passed {DIVERGE:g}x its minimum at lr {lr:.3g}"
    return True


def _not_finite(result: LRFindResult, lr: float) -> None:
    """A NaN/inf loss: the end of the test, or, on its first step, an error saying why."""
    if result.lrs:
        result.stopped = f"the loss was not finite at lr {lr:.3g}"
        return
    raise LRFindError(
        f"the loss was not finite at lr={lr:.2e} on the first step, before the LR could matter: the "
        f"model's initial weights (or init:), the loss or the data give it. Try train.precision: fp32, check the data "
        f"(clfkit data check) and any custom model or loss, or a recipe that trains" + _kept(result.plot)
    )


def _kept(plot: Path) -> str:
    """The note an error adds when an earlier plot lies where this one was to go."""
    return (
        f". No plot was written; {plot} is an earlier one, not of this test"
        if plot.exists()
        else ". No plot was written"
    )


def _plot(result: LRFindResult, name: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="#235", lw=2, label=f"smoothed (EMA {BETA})")
    for lr, style, label in (
        (result.suggested, "#c33", "suggested: steepest descent"),
        (result.min_over_10, "#e90", "minimum / 10"),
    ):
        if lr is not None:
            ax.axvline(lr, color=style, ls="--", lw=1, label=f"{label} {lr:.2e}")
    ax.set_xscale("log")  # its tick labels are mathtext: only the title (the recipe's name) is plain
    if result.smoothed:  # the divergence tail would squash the interesting part
        shown = result.smoothed[max(1, len(result.smoothed) // 10) :] or result.smoothed
        lo = min(shown)
        hi = max(shown[: shown.index(lo) + 1])
        ax.set_ylim(lo - 0.1 * (hi - lo) - 1e-3, hi + 0.25 * (hi - lo) + 1e-3)
    ax.set(xlabel="learning rate (optim.lr)", ylabel="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    ax.set_title(
        f"LR range test of {name}: {len(result.lrs)} steps"
        + (f"; {result.stopped}" if result.stopped else ""),
        fontsize=10,
        parse_math=False,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(result.plot, buf.getvalue())
