"""Losses. Contract: ``factory(num_classes, **args) -> nn.Module`` called as
``loss(logits, targets)`` where targets are class indices (N,) or soft labels (N, C) produced
by mixup, cutmix or label smoothing."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from typing import Any, Literal, Optional, Union

from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register


def _one_hot(targets: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    if targets.ndim == 2:
        return targets.to(like.dtype)
    return F.one_hot(targets, num_classes).to(like.dtype)


ClassWeights = Optional[Union[Literal["balanced"], list[Annotated[float, Field(ge=0, allow_inf_nan=False)]]]]


def class_weight_values(
    spec: Any, class_counts: Optional[list[int]], class_names: Optional[list[str]], num_classes: int
) -> Optional[list[float]]:
    """``loss.class_weights`` as one float per class. balanced: n / (C x count_c) from the
    train split's counts (sklearn's "balanced"); a list must have one weight per class."""
    names = class_names or [str(i) for i in range(num_classes)]
    if spec is None:
        return None
    if spec == "balanced":
        if class_counts is None:
            raise ValueError("class_weights: balanced needs the train split's class counts")
        empty = [n for n, c in zip(names, class_counts) if c == 0]
        if empty:
            raise ValueError(
                f"class_weights: balanced: class(es) {', '.join(map(repr, empty))} have no "
                f"training images (a weight of n / (C x 0)); give the weights as a list"
            )
        total = sum(class_counts)
        return [round(total / (num_classes * c), 6) for c in class_counts]
    if len(spec) != num_classes:
        raise ValueError(
            f"class_weights has {len(spec)} value(s), but the data has {num_classes} classes "
            f"({', '.join(names)}): give one weight per class, in that order"
        )
    if not any(spec):
        raise ValueError("class_weights are all 0: no class would count")
    return [float(w) for w in spec]


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with a weight per class, for index and soft targets alike: the batch loss
    is sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic, which for index targets is
    exactly ``F.cross_entropy(weight=w)`` (a weighted mean) and for mixup / cutmix / label
    smoothing targets weights each class's share of the target."""

    def __init__(self, weights: list[float], label_smoothing: float):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", torch.tensor(weights, dtype=torch.float32))

    def forward(self, logits, targets):
        if targets.ndim == 1:
            total = F.cross_entropy(
                logits,
                targets,
                weight=self.weight.to(logits.dtype),
                label_smoothing=self.label_smoothing,
                reduction="sum",
            )
            return _weighted_mean(total, self.weight[targets].sum())
        logp = logits.float().log_softmax(1)
        t = targets.float()
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / t.shape[1]
        wt = t * self.weight
        return _weighted_mean(-(wt * logp).sum(), wt.sum())


def _weighted_mean(total: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """``total / weight_sum`` (torch's weighted mean), but 0 for a batch whose images are all of
    0-weight classes: nothing to learn from it, where 0 / 0 would stop the run as a NaN loss."""
    weight_sum = weight_sum.float()
    return torch.where(weight_sum > 0, total.float() / weight_sum.clamp_min(1e-12), total.float() * 0)


@register("loss", "cross_entropy")
def cross_entropy(
    num_classes: int,
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    class_weights: ClassWeights = None,
    class_counts: Optional[list[int]] = None,
    class_names: Optional[list[str]] = None,
) -> nn.Module:
    """Softmax cross-entropy on logits (index or soft targets), with optional label smoothing.
    ``class_weights``: balanced (n / (classes x count) from the train split) or one weight per
    class, in class order; the weighted loss is a weighted mean over the batch, as torch's."""
    weights = class_weight_values(class_weights, class_counts, class_names, num_classes)
    if weights is None:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss = WeightedCrossEntropy(weights, label_smoothing)
    loss.class_weights = weights  # the trainer records them (summary.json, the run log)
    return loss


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
