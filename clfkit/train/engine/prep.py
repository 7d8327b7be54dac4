"""Batch preparation: the device-side step that turns a uint8 training batch into the model's
input and target (uint8 -> float, the batched augmentations, the regularizers' ``on_batch``
such as mixup, channels_last), as few kernel launches as the chain allows.

Randomness stays eager and exact: every step whose randomness is split from its work
(``draw``/``apply`` on a batched augmentation, ``on_batch_draw``/``on_batch_apply`` on a
regularizer; clfkit.components.augmentations and .regularizers) draws all its random numbers
for the batch first, from the same generators in the same order as its one-call form would.
What is left is a pure tensor function of (batch, draws); under ``train.compile`` each run of
consecutive split steps is one torch.compile graph (``dynamic=False``: a batch of another
shape, such as a short last batch, compiles once more). A step without the split (a plugin's
plain ``__call__(x, generator)`` or ``on_batch``) runs eagerly between the graphs.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from clfkit.errors import TrainingError


@dataclass
class _Step:
    """One step of the chain: a batched augmentation (``aug``) or a regularizer's on_batch."""

    obj: Any
    aug: bool

    @property
    def split(self) -> bool:
        names = ("draw", "apply") if self.aug else ("on_batch_draw", "on_batch_apply")
        return all(callable(getattr(self.obj, n, None)) for n in names)

    @property
    def name(self) -> str:
        return type(self.obj).__name__

    def draw(self, shape: tuple[int, ...], device: torch.device, gen: Optional[torch.Generator]) -> Any:
        return self.obj.draw(shape, device, gen) if self.aug else self.obj.on_batch_draw(shape, device)

    def apply(self, x: torch.Tensor, target: torch.Tensor, num_classes: int, draws: Any):
        if self.aug:
            return self.obj.apply(x, draws), target
        return self.obj.on_batch_apply(x, target, num_classes, draws)

    def eager(self, x: torch.Tensor, target: torch.Tensor, num_classes: int, gen: Optional[torch.Generator]):
        if self.aug:
            return self.obj(x, gen), target
        return self.obj.on_batch(x, target, num_classes)


def _pure_chain(
    steps: list[_Step], num_classes: int, to_float: bool, layout: Optional[torch.memory_format]
) -> Callable:
    """The pure part of consecutive split steps: f(x, target, draws) -> (x, target)."""

    def run(x: torch.Tensor, target: torch.Tensor, draws: tuple):
        if to_float:
            x = x.float()
        for step, d in zip(steps, draws):
            x, target = step.apply(x, target, num_classes, d)
        if layout is not None:
            x = x.contiguous(memory_format=layout)
        return x, target

    # A code object of its own: Dynamo caches graphs, and counts recompiles against its limit
    # (8), per code object; sharing run's with every other segment and BatchPrep of the process
    # (a sweep's trials) would run out of it and fall back to eager.
    return types.FunctionType(run.__code__.replace(), run.__globals__, run.__name__, None, run.__closure__)


def compile_chain(fn: Callable, backend: str) -> Callable:
    """``fn`` through torch.compile: one static-shape graph per batch shape (and per branch a
    step's draws select, e.g. mixup or cutmix). Inductor is told not to fuse a multiply and an
    add into one rounding (FMA, on by default in Triton), so the graph rounds as eager does and
    a compiled run's mixup blends equal an eager run's bit for bit."""
    options = {"emulate_precision_casts": True} if backend == "inductor" else None
    return torch.compile(fn, dynamic=False, backend=backend, options=options)


@dataclass
class BatchPrep:
    """The device-side preparation of one training batch, in order: uint8 -> float, the batched
    augmentations (drawing from the epoch's generator), the regularizers' ``on_batch`` (mixup,
    cutmix: they may change the targets), channels_last. ``compile`` (train.compile): the pure
    part of each run of split steps is a torch.compile graph on ``backend``; off, the same
    functions run eagerly, with the same results."""

    batched_aug: list[Any]
    on_batch: list[Any]
    num_classes: int
    channels_last: bool
    compile: bool = False
    backend: str = "inductor"
    segments: list[Any] = field(init=False, repr=False)

    def __post_init__(self):
        steps = [_Step(t, True) for t in self.batched_aug] + [_Step(r, False) for r in self.on_batch]
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        # consecutive split steps form one pure segment; a step without the split is its own
        self.segments = []
        for s in steps:
            if s.split and self.segments and isinstance(self.segments[-1], list):
                self.segments[-1].append(s)
            else:
                self.segments.append([s] if s.split else s)
        if not self.segments or not isinstance(self.segments[-1], list):
            self.segments.append([])  # an empty pure segment still casts and sets the layout
        if not isinstance(self.segments[0], list):
            self.segments.insert(0, [])
        last = len(self.segments) - 1
        self.pure = {
            k: _pure_chain(seg, self.num_classes, k == 0, layout if k == last else None)
            for k, seg in enumerate(self.segments)
            if isinstance(seg, list)
        }
        if self.compile:
            self.pure = {k: compile_chain(fn, self.backend) for k, fn in self.pure.items()}

    @property
    def eager_steps(self) -> list[str]:
        """The class names of the steps that run eagerly (no draw/apply split)."""
        return [s.name for s in self.segments if not isinstance(s, list)]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, gen: Optional[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input, training target) of the uint8 batch (x, y)."""
        target = y
        for k, seg in enumerate(self.segments):
            if not isinstance(seg, list):
                x, target = seg.eager(x, target, self.num_classes, gen)
                continue
            shape = tuple(x.shape)
            draws = tuple(s.draw(shape, x.device, gen) for s in seg)  # in chain order: the eager order
            x, target = self.pure[k](x, target, draws)
            if tuple(x.shape) != shape:
                names = ", ".join(s.name for s in seg)
                raise TrainingError(
                    f"batched step(s) {names}: apply changed the batch's shape from "
                    f"{list(shape)} to {list(x.shape)}; a transform with draw/apply must keep "
                    f"(N, C, H, W) (one that resizes implements __call__(x, generator) only)"
                )
        return x, target
