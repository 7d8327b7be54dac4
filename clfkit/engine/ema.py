"""Exponential moving average of the weights (``train.ema``), on top of timm's ModelEmaV3.

The trainer updates it after every optimizer step and evaluates, saves as best.pt and tests
the averaged copy. Its state for resume is the averaged weights alone: the decay warmup is a
function of the optimizer step, which ``last.pt`` already records.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.utils import ModelEmaV3

from clfkit.recipe import EMA


class WeightEMA:
    """An averaged copy of ``model`` (same device and dtype), updated from ``model``."""

    def __init__(self, model: nn.Module, cfg: EMA):
        # Holding the plain module (not a torch.compile wrapper) keeps state_dict keys equal.
        self.source = model
        self._ema = ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup)

    @property
    def module(self) -> nn.Module:
        """The averaged model, in eval mode."""
        return self._ema.module

    def update(self, step: int) -> None:
        """Fold the current weights in; ``step`` is the number of optimizer steps taken so far
        (the decay ramps up with it when warmup is on). No host sync."""
        self._ema.update(self.source, step=step)

    def state_dict(self) -> dict[str, Any]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema.module.load_state_dict(state)
