"""Losses. Contract: ``factory(num_classes, **args) -> nn.Module`` called as
``loss(logits, targets)`` where targets are class indices (N,) or soft labels (N, C) produced
by mixup, cutmix or label smoothing."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry import register


def _one_hot(targets: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2:
        return targets.to(like.dtype)
    return F.one_hot(targets, num_classes).to(like.dtype)


@register("loss", "cross_entropy")
def cross_entropy(num_classes: int, label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0) -> nn.Module:
    """Softmax cross-entropy on logits (index or soft targets), with optional label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class SquaredError(nn.Module):
    """1/2 * sum_k (out_k - t_k)^2, averaged over the batch; t is one-hot or soft."""

    def __init__(self, num_classes: int, on: str):
        super().__init__()
        self.num_classes, self.on = num_classes, on

    def forward(self, logits, targets):
        out = logits.float().softmax(1) if self.on == "probs" else logits.float()
        return (out - _one_hot(targets, self.num_classes, out)).pow(2).sum(1).mean() / 2


@register("loss", "squared_error")
def squared_error(num_classes: int, on: Literal["logits", "probs"] = "logits") -> nn.Module:
    """Euclidean loss: 1/2 * sum over classes of (output - one_hot)^2, averaged over the batch.
    ``on: probs`` compares softmax probabilities instead of raw outputs."""
    return SquaredError(num_classes, on)


class MultiClassHinge(nn.Module):
    """Weston-Watkins hinge. For soft targets t (mixup, cutmix, label smoothing) the loss is
    the target-weighted sum of each class's hinge, sum_k t_k * L(s, k): mixup's
    lam * L(a) + (1 - lam) * L(b), never a silent argmax."""

    def __init__(self, num_classes: int, margin: float):
        super().__init__()
        self.num_classes, self.margin = num_classes, margin

    def forward(self, logits, targets):
        logits = logits.float()
        if targets.ndim == 1:
            true = logits.gather(1, targets[:, None])
            margins = (self.margin - true + logits).clamp_min(0)
            margins = margins.scatter(1, targets[:, None], 0.0)  # j == y does not count
            return margins.sum(1).mean()
        # per_class[n, k] = sum_{j != k} max(0, margin - s_k + s_j)
        pair = (self.margin - logits[:, :, None] + logits[:, None, :]).clamp_min(0)  # (N, k, j)
        per_class = pair.sum(2) - self.margin  # drop j == k, which contributes exactly margin
        return (targets.to(per_class.dtype) * per_class).sum(1).mean()


@register("loss", "hinge")
def hinge(num_classes: int, margin: Annotated[float, Field(gt=0)] = 1.0) -> nn.Module:
    """Multi-class hinge (Weston-Watkins): sum over j != y of max(0, margin - s_y + s_j);
    soft targets weight each class's hinge by its target mass."""
    return MultiClassHinge(num_classes, margin)
