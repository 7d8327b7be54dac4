"""Model statistics for `clfkit recipe check`: parameters and MACs at the recipe's input size."""

from __future__ import annotations

import torch

from clfkit.train.build import build_model, peek_data
from clfkit.recipe import Recipe


def model_stats(recipe: Recipe) -> dict:
    """Parameters and multiply-accumulates of one forward pass of one image."""
    from torch.utils.flop_counter import FlopCounterMode

    num_classes, in_chans = peek_data(recipe)
    assumed = not num_classes  # e.g. a folder dataset whose root is not on this machine
    num_classes = num_classes or 10
    size = recipe.data.size
    c = in_chans
    model = build_model(recipe, num_classes, c, size, [0.0] * c, [1.0] * c).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, *size))
    return {
        "params": params,
        "macs": counter.get_total_flops() // 2,
        "num_classes": num_classes,
        "in_chans": c,
        "image_size": size,
        "classes_assumed": assumed,
    }
