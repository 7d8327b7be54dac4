"""Activations. Contract: ``factory(inplace=False) -> nn.Module``."""

from __future__ import annotations

import torch.nn as nn
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register


@register("activation", "relu")
def relu(inplace: bool = False) -> nn.Module:
    """ReLU."""
    return nn.ReLU(inplace=inplace)


@register("activation", "leaky_relu")
def leaky_relu(inplace: bool = False, negative_slope: Annotated[float, Field(ge=0)] = 0.01) -> nn.Module:
    """LeakyReLU with the given negative slope."""
    return nn.LeakyReLU(negative_slope, inplace=inplace)


@register("activation", "gelu")
def gelu(inplace: bool = False) -> nn.Module:
    """GELU (exact erf form)."""
    return nn.GELU()


@register("activation", "silu")
def silu(inplace: bool = False) -> nn.Module:
    """SiLU / swish."""
    return nn.SiLU(inplace=inplace)


@register("activation", "sigmoid")
def sigmoid(inplace: bool = False) -> nn.Module:
    """Logistic sigmoid."""
    return nn.Sigmoid()


@register("activation", "tanh")
def tanh(inplace: bool = False) -> nn.Module:
    """Hyperbolic tangent."""
    return nn.Tanh()
