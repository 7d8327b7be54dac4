"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from clfkit import registry
import torch.nn.functional as F
from clfkit.components.losses import WeightedCrossEntropy

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
Y = torch.tensor([0, 2])


def loss(name, **args):
    return registry.create("loss", name, num_classes=3, **args)


def test_cross_entropy_by_hand():
    expected = (
        -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
        - math.log(1 / (math.exp(0.5) + math.exp(1.5) + 1))
    ) / 2
    assert float(loss("cross_entropy")(LOGITS, Y)) == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_label_smoothing_equals_smoothed_targets():
    eps = 0.1
    soft = torch.nn.functional.one_hot(Y, 3).float() * (1 - eps) + eps / 3
    assert float(loss("cross_entropy", label_smoothing=eps)(LOGITS, Y)) == pytest.approx(
        float(loss("cross_entropy")(LOGITS, soft)), rel=1e-6
    )


def test_squared_error_by_hand():
    # 1/2 * sum_k (s_k - onehot_k)^2, mean over the batch
    first = ((2 - 1) ** 2 + 0 + 1) / 2
    second = (0.25 + 2.25 + 1) / 2
    assert float(loss("squared_error")(LOGITS, Y)) == pytest.approx((first + second) / 2)
    p = LOGITS.softmax(1)
    by_probs = float(((p - torch.nn.functional.one_hot(Y, 3)) ** 2).sum(1).mean() / 2)
    assert float(loss("squared_error", on="probs")(LOGITS, Y)) == pytest.approx(by_probs)


def test_hinge_by_hand():
    # sample 0, y=0: max(0, 5-2+0) + max(0, 5-2-1) = 3 + 2 = 5
    # sample 1, y=2: max(0, 5-0+0.5) + max(0, 5-0+1.5) = 5.5 + 6.5 = 12
    assert float(loss("hinge", margin=5.0)(LOGITS, Y)) == pytest.approx(8.5)
    # margin 1: sample 0: 0 + 0 = 0; sample 1: 1.5 + 2.5 = 4
    assert float(loss("hinge", margin=1.0)(LOGITS, Y)) == pytest.approx(2.0)


def test_hinge_soft_targets_are_the_weighted_hinge_not_an_argmax():
    h = loss("hinge", margin=5.0)
    one_hot = torch.nn.functional.one_hot(Y, 3).float()
    assert float(h(LOGITS, one_hot)) == pytest.approx(float(h(LOGITS, Y)))
    # a mixup target 0.7 * class 0 + 0.3 * class 1 on sample 0 alone
    target = torch.tensor([[0.7, 0.3, 0.0]])
    l0 = float(h(LOGITS[:1], torch.tensor([0])))
    l1 = float(h(LOGITS[:1], torch.tensor([1])))  # max(0, 5-0+2) + max(0, 5-0-1) = 11
    assert l1 == pytest.approx(11.0)
    assert float(h(LOGITS[:1], target)) == pytest.approx(0.7 * l0 + 0.3 * l1)


@pytest.mark.parametrize(
    "name", [e.name for e in registry.REGISTRY.entries("loss") if e.provider == registry.BUILTIN]
)
def test_every_loss_takes_index_and_soft_targets_and_has_gradients(name):
    logits = LOGITS.clone().requires_grad_()
    fn = loss(name)
    fn(logits, Y).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    assert torch.isfinite(fn(LOGITS, soft))


def test_a_batch_of_only_zero_weight_classes_has_loss_zero_not_nan():
    # before: class_weights [0, 1, 1] with a batch of class 0 only: 0 / 0, and the run stopped
    # with "non-finite training loss ... the learning rate is probably too high"
    torch.manual_seed(0)
    loss = WeightedCrossEntropy([0.0, 1.0, 1.0], label_smoothing=0.1)
    logits = torch.randn(4, 3, requires_grad=True)
    zeros = torch.zeros(4, dtype=torch.long)
    # index targets (smoothing or not), and soft targets (mixup) without smoothing
    for fn, targets in (
        (loss, zeros),
        (WeightedCrossEntropy([0.0, 1.0, 1.0], 0.0), F.one_hot(zeros, 3).float()),
    ):
        value = fn(logits, targets)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(logits.grad).all()
        logits.grad = None
    # and a batch with weight keeps torch's weighted mean
    y = torch.tensor([0, 1, 2, 1])
    expected = F.cross_entropy(logits, y, weight=loss.weight, label_smoothing=0.1)
    assert torch.allclose(loss(logits, y), expected)
