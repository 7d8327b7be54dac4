"""Regularizers. Contract: ``factory(**args)`` returns an object with any of these hooks,
called by the trainer in this order (a missing hook is skipped):

- ``on_model(model) -> model | None``            once, after the model is built
- ``on_param_groups(groups) -> groups``          once, before the optimizer is built
- ``on_batch(x, y, num_classes) -> (x, y)``      each training batch; y may become (N, C) soft labels

``on_batch`` may be split as the batched augmentations' draw/apply are: ``on_batch_draw(shape,
device)`` draws the batch's random numbers (None: leave this batch as it is) and
``on_batch_apply(x, y, num_classes, draws) -> (x, y)`` is a pure tensor function of them, which
BatchPrep compiles with the rest of the batch preparation under ``train.compile``. Draws that
become tensors are tensors (not Python numbers, which a compiled graph would bake in).
- ``on_loss(loss, model) -> loss``               each training step, before backward
- ``before_step(model, optimizer)``              after backward (gradients unscaled), before the step

Dropout and weight decay are arguments of the models and optimizers; the regularizers here
are the ones that act on the training step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register

Prob = Annotated[float, Field(ge=0, le=1)]


def _soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y if y.ndim == 2 else F.one_hot(y, num_classes).float()


def _on_device(values: list[float], device: torch.device) -> torch.Tensor:
    """Host-drawn numbers as one float32 tensor on ``device``: pinned and copied without
    blocking on CUDA (a plain copy from pageable memory would wait for the GPU every step).
    float32 is what eager arithmetic with the Python numbers rounds them to, so results match."""
    t = torch.tensor(values, dtype=torch.float32)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class SplitBatch:
    """``on_batch`` as its two halves: the draws, then the pure work on them."""

    def on_batch(self, x, y, num_classes):
        return self.on_batch_apply(x, y, num_classes, self.on_batch_draw(tuple(x.shape), x.device))


@dataclass
class Mixup(SplitBatch):
    alpha: float
    p: float

    def on_batch_draw(self, shape, device):
        if self.p < 1 and torch.rand(()).item() > self.p:
            return None
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        perm = torch.randperm(shape[0], device=device)
        return "mixup", _on_device([lam, 1 - lam], device), perm

    def on_batch_apply(self, x, y, num_classes, draws):
        y = _soft(y, num_classes)
        if draws is None:
            return x, y
        _, w, perm = draws
        return w[0] * x + w[1] * x[perm], w[0] * y + w[1] * y[perm]


def _soft_label_check(recipe, path):
    """Label smoothing asked twice (the loss's own argument and a regularizer) would apply twice."""
    problems = []
    loss = dict(recipe.loss)
    if loss.get("label_smoothing"):
        problems.append(
            (
                path,
                f"label smoothing is already set in loss.label_smoothing "
                f"({loss['label_smoothing']}); both would apply, smoothing twice. Keep one: "
                f"remove this regularizer or set loss.label_smoothing=0",
            )
        )
    mine = [i for i, r in enumerate(recipe.regularizers) if r["name"] == "label_smoothing"]
    if len(mine) > 1 and path == f"regularizers.{mine[-1]}":
        problems.append(
            (
                path,
                f"label_smoothing is listed {len(mine)} times (regularizers."
                f"{', regularizers.'.join(map(str, mine))}); it would apply each time",
            )
        )
    return problems


@register("regularizer", "mixup")
def mixup(alpha: Annotated[float, Field(gt=0)] = 0.2, p: Prob = 1.0) -> Mixup:
    """Mixup (Zhang et al. 2018): convex blends of image pairs and of their labels."""
    return Mixup(alpha, p)


@dataclass
class CutMix(SplitBatch):
    alpha: float
    p: float

    def on_batch_draw(self, shape, device):
        if self.p < 1 and torch.rand(()).item() > self.p:
            return None
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        h, w = shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        perm = torch.randperm(shape[0], device=device)
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        # the box as tensor values, not Python ints: one compiled graph for every box
        return "cutmix", _on_device([y0, y1, x0, x1, lam, 1 - lam], device), perm

    def on_batch_apply(self, x, y, num_classes, draws):
        y = _soft(y, num_classes)
        if draws is None:
            return x, y
        _, v, perm = draws
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        box = ((rows >= v[0]) & (rows < v[1]))[:, None] & ((cols >= v[2]) & (cols < v[3]))[None, :]
        return torch.where(box, x[perm], x), v[4] * y + v[5] * y[perm]


@register("regularizer", "cutmix")
def cutmix(alpha: Annotated[float, Field(gt=0)] = 1.0, p: Prob = 1.0) -> CutMix:
    """CutMix (Yun et al. 2019): paste a box from another image; labels mix by area."""
    return CutMix(alpha, p)


_MIXES = ("mixup", "cutmix", "mixup_cutmix")


def _one_mix_check(recipe, path):
    """Mixup and cutmix each listed would both apply to every batch (a cutmix box pasted into a
    mixed image): ambiguous, so refused at load; ``mixup_cutmix`` picks one per batch."""
    listed = [(i, r["name"]) for i, r in enumerate(recipe.regularizers) if r["name"] in _MIXES]
    if len(listed) < 2 or path != f"regularizers.{listed[-1][0]}":
        return []  # reported once, at the last of them
    where = ", ".join(f"regularizers.{i} ({name})" for i, name in listed)
    return [
        (
            path,
            f"{where}: more than one image-mixing regularizer would mix every batch more than once. "
            f"Keep one; for mixup and cutmix both, list only {{name: mixup_cutmix, mixup_alpha: ..., "
            f"cutmix_alpha: ..., switch_prob: ...}}, which picks one of them per batch",
        )
    ]


@dataclass
class MixupCutMix:
    """One of mixup or cutmix per batch (timm's Mixup with both alphas): cutmix with
    probability ``switch_prob``, else mixup; ``p``: the chance a batch is mixed at all."""

    mixup: Mixup
    cutmix: CutMix
    switch_prob: float
    p: float

    def on_batch(self, x, y, num_classes):
        if self.p < 1 and torch.rand(()).item() > self.p:
            return x, _soft(y, num_classes)
        pick = self.cutmix if torch.rand(()).item() < self.switch_prob else self.mixup
        return pick.on_batch(x, y, num_classes)

    def on_batch_draw(self, shape, device):  # the same draws, in the same order, as on_batch
        if self.p < 1 and torch.rand(()).item() > self.p:
            return None
        pick = self.cutmix if torch.rand(()).item() < self.switch_prob else self.mixup
        return pick.on_batch_draw(shape, device)

    def on_batch_apply(self, x, y, num_classes, draws):
        if draws is None:
            return x, _soft(y, num_classes)
        pick = self.cutmix if draws[0] == "cutmix" else self.mixup
        return pick.on_batch_apply(x, y, num_classes, draws)


@register("regularizer", "mixup_cutmix")
def mixup_cutmix(
    mixup_alpha: Annotated[float, Field(gt=0)] = 0.8,
    cutmix_alpha: Annotated[float, Field(gt=0)] = 1.0,
    switch_prob: Prob = 0.5,
    p: Prob = 1.0,
) -> MixupCutMix:
    """Mixup or CutMix, one per batch (timm's Mixup): CutMix with probability ``switch_prob``,
    else Mixup; ``p`` is the chance a batch is mixed at all. Listing mixup and cutmix apart is
    refused (both would mix the same batch)."""
    return MixupCutMix(Mixup(mixup_alpha, 1.0), CutMix(cutmix_alpha, 1.0), switch_prob, p)


mixup.check_recipe = cutmix.check_recipe = mixup_cutmix.check_recipe = _one_mix_check


@dataclass
class LabelSmoothing(SplitBatch):
    eps: float

    def on_batch_draw(self, shape, device):
        return None  # no randomness: all of it is the pure part

    def on_batch_apply(self, x, y, num_classes, draws):
        y = _soft(y, num_classes)
        return x, y * (1 - self.eps) + self.eps / num_classes


@register("regularizer", "label_smoothing")
def label_smoothing(eps: Annotated[float, Field(gt=0, lt=1)] = 0.1) -> LabelSmoothing:
    """Label smoothing: targets become (1 - eps) * one_hot + eps / num_classes."""
    return LabelSmoothing(eps)


label_smoothing.check_recipe = _soft_label_check


@dataclass
class GradClip:
    max_norm: float

    def before_step(self, model, optimizer):
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.max_norm)


@register("regularizer", "grad_clip")
def grad_clip(max_norm: Annotated[float, Field(gt=0)] = 1.0) -> GradClip:
    """Clip the global gradient norm to ``max_norm`` before each step."""
    return GradClip(max_norm)


class NoDecayNormBias:
    def on_param_groups(self, groups):
        out = []
        for g in groups:
            decay = [p for p in g["params"] if p.ndim > 1]
            other = [p for p in g["params"] if p.ndim <= 1]  # biases and norm scales/shifts
            out.append({**g, "params": decay})
            if other:
                out.append({**g, "params": other, "weight_decay": 0.0})
        return out


@register("regularizer", "no_decay_norm_bias")
def no_decay_norm_bias() -> NoDecayNormBias:
    """Exempt biases and normalization parameters (all 0-d/1-d tensors) from weight decay."""
    return NoDecayNormBias()
