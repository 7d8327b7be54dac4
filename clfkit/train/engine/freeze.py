"""``train.freeze: backbone`` and ``train.unfreeze_epoch``: which tensors train in an epoch.

The head is the model's classifier (clfkit.train.param_groups.head_names). Frozen tensors get
``requires_grad=False``: their gradients stay None, so every torch optimizer skips them (no
step, no weight decay, no state), and the optimizer built over all tensors at the start simply
starts updating them at the unfreeze epoch. Frozen normalization layers with running
statistics (BatchNorm) are put in eval mode after ``model.train()``, so their statistics do not
change either. Which tensors are frozen is a function of the epoch alone, so a resume is exact
across the unfreeze epoch.
"""

from __future__ import annotations

from typing import Optional

import torch.nn as nn

from clfkit.train.param_groups import head_names


def frozen_in_epoch(freeze: Optional[str], unfreeze_epoch: Optional[int], epoch: int) -> bool:
    """Whether the backbone is frozen in 0-based ``epoch`` (unfreeze_epoch is 1-based)."""
    return freeze == "backbone" and (unfreeze_epoch is None or epoch + 1 < unfreeze_epoch)


def set_backbone_frozen(net: nn.Module, frozen: bool) -> list[nn.Module]:
    """Freeze (or unfreeze) every parameter of ``net`` outside its head; returns the frozen
    modules with running statistics, which the loop keeps in eval mode."""
    head = head_names(net)
    for name, p in net.named_parameters():
        p.requires_grad_(not frozen or name in head)
    if not frozen:
        return []
    head_modules = {n.rsplit(".", 1)[0] for n in head}
    return [
        m
        for n, m in net.named_modules()
        if n not in head_modules
        and getattr(m, "track_running_stats", False)
        and getattr(m, "running_mean", None) is not None
    ]
