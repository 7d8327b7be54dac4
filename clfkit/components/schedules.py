"""Learning-rate schedules. Contract: ``factory(total_steps, steps_per_epoch, epochs, **args)``
returns ``f(step) -> multiplier`` of the optimizer's base LR, evaluated every optimizer step.
Epoch-based arguments are in epochs (floats allowed) and converted to steps here, so a
schedule is smooth within an epoch and exact after a resume."""

from __future__ import annotations

import math
from typing import Callable

from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register

Epochs = Annotated[float, Field(ge=0)]
Gamma = Annotated[float, Field(gt=0, le=1)]


def _with_warmup(f: Callable[[int], float], warmup_steps: int) -> Callable[[int], float]:
    if warmup_steps <= 0:
        return f
    return lambda step: min(1.0, (step + 1) / warmup_steps) * f(step)


@register("schedule", "constant")
def constant(total_steps: int, steps_per_epoch: int, warmup_epochs: Epochs = 0.0) -> Callable[[int], float]:
    """Constant LR (after an optional linear warmup)."""
    return _with_warmup(lambda step: 1.0, round(warmup_epochs * steps_per_epoch))


@register("schedule", "step")
def step(
    total_steps: int,
    steps_per_epoch: int,
    step_epochs: Annotated[float, Field(gt=0)] = 30,
    gamma: Gamma = 0.1,
    warmup_epochs: Epochs = 0.0,
) -> Callable[[int], float]:
    """Multiply the LR by gamma every ``step_epochs`` epochs (StepLR)."""
    size = max(1, round(step_epochs * steps_per_epoch))
    return _with_warmup(lambda s: gamma ** (s // size), round(warmup_epochs * steps_per_epoch))


@register("schedule", "multistep")
def multistep(
    total_steps: int,
    steps_per_epoch: int,
    milestones: list[Annotated[float, Field(gt=0)]] = [30, 60],
    gamma: Gamma = 0.1,
    warmup_epochs: Epochs = 0.0,
) -> Callable[[int], float]:
    """Multiply the LR by gamma at each milestone epoch (MultiStepLR)."""
    marks = sorted(round(m * steps_per_epoch) for m in milestones)
    return _with_warmup(lambda s: gamma ** sum(s >= m for m in marks), round(warmup_epochs * steps_per_epoch))


@register("schedule", "cosine")
def cosine(
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: Epochs = 0.0,
    min_ratio: Annotated[float, Field(ge=0, le=1)] = 0.0,
) -> Callable[[int], float]:
    """Cosine decay from the base LR to ``min_ratio`` x base LR over the run, after warmup."""
    warm = round(warmup_epochs * steps_per_epoch)

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        t = min(1.0, (s - warm) / max(1, total_steps - warm))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


@register("schedule", "onecycle")
def onecycle(
    total_steps: int,
    steps_per_epoch: int,
    pct_start: Annotated[float, Field(gt=0, lt=1)] = 0.25,
    div_factor: Annotated[float, Field(ge=1)] = 25.0,
    final_div_factor: Annotated[float, Field(ge=1)] = 1e4,
) -> Callable[[int], float]:
    """One-cycle (Smith): linear rise from base/div_factor to base, cosine fall to
    base/(div_factor*final_div_factor); the optimizer's lr is the peak."""
    up = max(1, round(pct_start * total_steps))
    lo, end = 1 / div_factor, 1 / (div_factor * final_div_factor)

    def f(s: int) -> float:
        if s < up:
            return lo + (1 - lo) * s / up
        t = min(1.0, (s - up) / max(1, total_steps - up))
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))

    return f
