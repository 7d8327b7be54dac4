"""Normalization layers. Contract: ``factory(num_features, dim=2) -> nn.Module`` where ``dim``
is 2 for (N, C, H, W) feature maps and 1 for (N, C) feature vectors."""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register


@register("norm", "batch")
def batch_norm(
    num_features: int,
    dim: Literal[1, 2] = 2,
    momentum: Annotated[float, Field(gt=0, le=1)] = 0.1,
    eps: Annotated[float, Field(gt=0)] = 1e-5,
) -> nn.Module:
    """BatchNorm over the batch (BatchNorm1d / BatchNorm2d)."""
    cls = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
    return cls(num_features, eps=eps, momentum=momentum)


@register("norm", "instance")
def instance_norm(num_features: int, dim: Literal[1, 2] = 2, affine: bool = True) -> nn.Module:
    """InstanceNorm2d on feature maps; on feature vectors each sample is normalized over its
    features (the vector's own statistics), i.e. a LayerNorm."""
    if dim == 2:
        return nn.InstanceNorm2d(num_features, affine=affine)
    return nn.LayerNorm(num_features, elementwise_affine=affine)


@register("norm", "group")
def group_norm(
    num_features: int, dim: Literal[1, 2] = 2, groups: Annotated[int, Field(ge=1)] = 32
) -> nn.Module:
    """GroupNorm; ``groups`` is reduced to the largest divisor of the channel count."""
    g = min(groups, num_features)
    while num_features % g:
        g -= 1
    return nn.GroupNorm(g, num_features)


@register("norm", "layer")
def layer_norm(num_features: int, dim: Literal[1, 2] = 2) -> nn.Module:
    """LayerNorm over all features of a sample (GroupNorm with one group on feature maps)."""
    return nn.GroupNorm(1, num_features) if dim == 2 else nn.LayerNorm(num_features)


@register("norm", "none")
def no_norm(num_features: int, dim: Literal[1, 2] = 2) -> nn.Module:
    """No normalization (identity): the ablation switch."""
    return nn.Identity()
