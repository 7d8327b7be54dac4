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
layer_decay). Nothing is written but the plot: no run folder, no checkpoint. The plot goes
where ``out`` says (default ``lr_find_<recipe name>.png`` in the current folder), and an
existing file there is replaced only when it is a PNG.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from clfkit.train.engine.batches import train_batches
from clfkit.train.engine.prep import BatchPrep
from clfkit.train.engine.runtime import place_model, resolve_runtime, seed_everything
from clfkit.errors import LRFindError
from clfkit.recipe import Recipe
from clfkit.train.init_weights import input_normalization, load_init
from clfkit.run.reader import is_run

BETA = 0.98      # the loss's moving average
DIVERGE = 4.0    # stop once the smoothed loss is this many times its minimum
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class LRFindResult:
    plot: Path
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)     # each step's loss
    smoothed: list[float] = field(default_factory=list)   # the bias-corrected moving average
    suggested: float | None = None                     # steepest descent of the smoothed loss
    min_over_10: float | None = None                   # the LR of the lowest smoothed loss / 10
    stopped: str = ""                                     # why the test ended before end_lr, if it did

    def lines(self) -> list[str]:
        """What the CLI prints: the range, why it stopped, the suggestion, the plot."""
        out = [f"{len(self.lrs)} steps, lr {self.lrs[0]:.2e} to {self.lrs[-1]:.2e}" if self.lrs else "no step finished"]
        if self.stopped:
            out.append(f"stopped early: {self.stopped}")
        if self.suggested is None:
            out.append("no suggestion: the loss was lowest within the first tenth of the steps (no descent to find); "
                       "lower --start-lr" + (f". The minimum / 10: {self.min_over_10:.2e}" if self.min_over_10 else ""))
        else:
            out.append(f"suggested lr: {self.suggested:.2e} (steepest descent of the smoothed loss); the minimum / 10: "
                       f"{self.min_over_10:.2e}. Try: --set optim.lr={self.suggested:.2e}")
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
        raise LRFindError(f"-o {path}: {path.parent} is a run folder, and lr-find writes nothing into run "
                          f"folders; give a path outside it")
    if path.exists():
        try:
            with path.open("rb") as f:
                is_png = f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        except OSError as e:
            raise LRFindError(f"-o {path}: cannot read the file there ({e.strerror})") from None
        if not is_png:
            raise LRFindError(f"-o {path} exists and is not a PNG image; lr-find replaces only an earlier plot. "
                              f"Give another name")
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
    x, y = np.log10(lrs[skip:lowest + 1]), np.array(smoothed[skip:lowest + 1])
    slope = np.gradient(y, x)[:-1]  # not the minimum itself (a one-sided difference there)
    return float(lrs[skip + int(np.argmin(slope))]), float(lrs[lowest]) / 10


def lr_find(recipe: Recipe, out: str | Path | None = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, log: Callable[[str], None] = print) -> LRFindResult:
    """Run the range test on ``recipe`` and write its plot; see the module docstring."""
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise LRFindError(f"--start-lr {start_lr:g} and --end-lr {end_lr:g}: need 0 < start < end")
    path = plot_path(recipe, out)  # before any data is read: a bad -o fails at once
    result = LRFindResult(path)
    _range_test(recipe, result, start_lr, end_lr, steps)
    result.suggested, result.min_over_10 = suggestions(result.lrs, result.smoothed)
    _plot(result, recipe.name)
    return result


def _setup(recipe: Recipe):
    """(runtime, model, loss, optimizer, batch preparation, per-image augmentations, train split)."""
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    seed_everything(recipe.seed, recipe.train.deterministic)
    splits = build_data(recipe)
    mean, std, _ = input_normalization(recipe, splits.train)
    model = build_model(recipe, splits.num_classes, splits.in_chans, splits.image_size, mean, std)
    if recipe.init:
        load_init(model, recipe.init, recipe.init_min_match, splits.num_classes)
    regularizers = build_regularizers(recipe)
    for r in regularizers:
        if hasattr(r, "on_model"):
            model = r.on_model(model) or model
    model = place_model(model, rt)
    optimizer = build_optimizer(recipe, model, regularizers)
    per_image, batched = build_augmentations(recipe)
    prep = BatchPrep(batched, [r for r in regularizers if hasattr(r, "on_batch")], splits.num_classes,
                     rt.channels_last)
    return rt, model, build_loss(recipe, splits.num_classes, splits).to(rt.device), optimizer, prep, per_image, splits.train


def _range_test(recipe: Recipe, result: LRFindResult, start_lr: float, end_lr: float, steps: int) -> None:
    rt, model, loss_fn, optimizer, prep, per_image, train = _setup(recipe)
    tc = recipe.train
    workers = recipe.data.workers if recipe.data.workers is not None else 0
    gen = torch.Generator(device=rt.device).manual_seed(recipe.seed)
    model.train()
    avg, epoch = 0.0, 0
    while len(result.lrs) < steps:
        batches = train_batches(train, tc.batch_size, recipe.seed, epoch, drop_last=tc.drop_last, device=rt.device, per_image=per_image, workers=workers)
        for x, y in batches:
            i = len(result.lrs)
            lr = start_lr * (end_lr / start_lr) ** (i / max(steps - 1, 1))
            for g in optimizer.param_groups:  # the groups keep their ratios to the recipe's LR
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x, target = prep(x, y, gen)
            with rt.autocast():
                loss = loss_fn(model(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.detach())  # one host sync per step: the test's whole point is this number
            if not math.isfinite(value):
                result.stopped = f"the loss was {value} at lr {lr:.3g}"
                return
            avg = BETA * avg + (1 - BETA) * value
            smooth = avg / (1 - BETA ** (i + 1))
            result.lrs.append(lr)
            result.losses.append(value)
            result.smoothed.append(smooth)
            if smooth > DIVERGE * min(result.smoothed):
                result.stopped = f"the smoothed loss passed {DIVERGE:g}x its minimum at lr {lr:.3g}"
                return
            if len(result.lrs) >= steps:
                return
        epoch += 1


def _plot(result: LRFindResult, name: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 5.0), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="#235", lw=2, label=f"smoothed (EMA {BETA})")
    for lr, style, label in ((result.suggested, "#c33", "suggested: steepest descent"),
                             (result.min_over_10, "#e90", "minimum / 10")):
        if lr is not None:
            ax.axvline(lr, color=style, ls="--", lw=1, label=f"{label} {lr:.2e}")
    ax.set_xscale("log")  # its tick labels are mathtext: only the title (the recipe's name) is plain
    if result.smoothed:  # the divergence tail would squash the interesting part
        shown = result.smoothed[max(1, len(result.smoothed) // 10):] or result.smoothed
        lo = min(shown)
        hi = max(shown[:shown.index(lo) + 1])
        ax.set_ylim(lo - 0.1 * (hi - lo) - 1e-3, hi + 0.25 * (hi - lo) + 1e-3)
    ax.set(xlabel="learning rate (optim.lr)", ylabel="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=9)
    ax.set_title(f"LR range test of {name}: {len(result.lrs)} steps" + (f"; {result.stopped}" if result.stopped else ""),
                 fontsize=10, parse_math=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes(result.plot, buf.getvalue())
