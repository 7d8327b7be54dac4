"""Exponential moving average of the weights (``train.ema``), on top of timm's ModelEmaV3.

The trainer updates it after every optimizer step and evaluates, saves as best.pt and tests
the averaged copy. Its state for resume is the averaged weights alone: the decay warmup is a
function of the optimizer step, which ``last.pt`` already records.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn


class WeightEMA:
    """An averaged copy of ``model`` (same device and dtype), updated from ``model``."""

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool):
        # timm (and torchvision under it) only when a run asks for EMA: importing it costs
        # ~200 MB of resident memory and seconds of start-up in every run
        from timm.utils import ModelEmaV3

        # Holding the plain module (not a torch.compile wrapper) keeps state_dict keys equal.
        self.source = model
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        # (averaged float tensors, source float tensors, averaged others, source others), built
        # once: rebuilding two state_dicts every step costs more host time than the update
        self._pairs: Optional[tuple[list[torch.Tensor], ...]] = None

    def _tensor_pairs(self) -> tuple[list[torch.Tensor], ...]:
        if self._pairs is None:
            pairs: tuple[list[torch.Tensor], ...] = ([], [], [], [])
            for ema_v, src_v in zip(
                self._ema.module.state_dict().values(), self.source.state_dict().values()
            ):
                k = 0 if ema_v.is_floating_point() else 2
                pairs[k].append(ema_v)
                pairs[k + 1].append(src_v)
            self._pairs = pairs
        return self._pairs

    @property
    def module(self) -> nn.Module:
        """The averaged model, in eval mode."""
        return self._ema.module

    def update(self, step: int) -> None:
        """Fold the current weights in; ``step`` is the number of optimizer steps taken so far
        (the decay ramps up with it when warmup is on). No host sync. The same arithmetic as
        timm's ModelEmaV3.update (its decay schedule, one lerp), over cached tensor lists."""
        decay = self._ema.get_decay(step)
        ema_f, src_f, ema_other, src_other = self._tensor_pairs()
        with torch.no_grad():
            if ema_other:
                torch._foreach_copy_(ema_other, src_other)  # integer buffers (BatchNorm's counter)
            torch._foreach_lerp_(ema_f, src_f, weight=1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._ema.module.load_state_dict(state)  # in place: the cached tensor lists stay valid
