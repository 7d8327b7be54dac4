"""Test-time augmentation as a model wrapper, so that the exported graph and ``clfkit eval``
compute exactly the same thing: ``flip`` averages the logits of the image and its mirror image
(horizontal flip). Torch only; no clfkit imports (export and evaluation both use it)."""

from __future__ import annotations

import torch
from torch import nn

TTA_MODES = ("none", "flip")


class FlipAverage(nn.Module):
    """``(model(x) + model(x flipped left-right)) / 2`` for NCHW ``x``: one graph, two passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # the wrapper starts in the model's mode: an exporter that restores "the" mode afterwards
        # would otherwise put an eval model back into training (BatchNorm on batch statistics)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) + self.model(torch.flip(x, dims=[-1]))) * 0.5


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """``model`` wrapped for test-time augmentation ``tta`` (one of TTA_MODES)."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return FlipAverage(model) if tta == "flip" else model
