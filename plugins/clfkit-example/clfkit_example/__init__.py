"""clfkit-example: one clfkit component of each pluggable kind.

clfkit imports this module through the entry point in pyproject.toml; each ``@register``
below adds one component. What clfkit passes to each factory, and what it must return, is the
kind's contract (clfkit's README, "Writing a plugin"); a factory's own keyword arguments, with
their type hints and defaults, are what a recipe may set, and are validated when it is loaded.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry import register

__version__ = "0.1.0"


# --------------------------------------------------------------------------- model
@register("model", "example_net")
def example_net(
    num_classes: int,
    in_chans: int,
    norm: str | dict = "batch",
    activation: str | dict = "relu",
    width: Annotated[int, Field(ge=1)] = 32,
    depth: Annotated[int, Field(ge=1, le=6)] = 3,
) -> nn.Module:
    """Small CNN: ``depth`` blocks of conv -> norm -> activation -> max-pool, then a linear head.

    ``norm`` and ``activation`` are written in the recipe as component names (or
    ``{name: ..., args}``); clfkit hands them over as factories: ``norm(channels, dim=2)``,
    ``activation()``.
    """
    layers: list[nn.Module] = []
    c = in_chans
    for i in range(depth):
        out = width * 2**i
        layers += [
            nn.Conv2d(c, out, 3, padding=1, bias=False),
            norm(out, dim=2),
            activation(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- norm
class RMSNorm(nn.Module):
    """Divide each position's channel vector by its root mean square; learnable scale."""

    def __init__(self, num_features: int, dim: int, eps: float):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.pow(2).mean(1, keepdim=True).add(self.eps).sqrt()  # over channels (dim 1)
        scale = self.weight.view(1, -1, 1, 1) if self.dim == 2 else self.weight
        return x / rms * scale


@register("norm", "example_rmsnorm")
def example_rmsnorm(num_features: int, dim: int = 2, eps: Annotated[float, Field(gt=0)] = 1e-6) -> nn.Module:
    """RMSNorm over channels (Zhang & Sennrich 2019): no mean subtraction, no bias."""
    return RMSNorm(num_features, dim, eps)


# --------------------------------------------------------------------------- regularizer
class L1Penalty:
    """Regularizer hooks are plain methods; this one uses only ``on_loss``."""

    def __init__(self, weight: float):
        self.weight = weight

    def on_loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        l1 = sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)
        return loss + self.weight * l1


@register("regularizer", "example_l1")
def example_l1(weight: Annotated[float, Field(ge=0)] = 1e-5) -> L1Penalty:
    """Add ``weight`` x the L1 norm of all weight matrices and kernels to the loss."""
    return L1Penalty(weight)


# --------------------------------------------------------------------------- augmentation
class GaussianNoise:
    """A batched transform: float (N, C, H, W) images in 0..255 on the training device."""

    batched = True

    def __init__(self, std: float, p: float):
        self.std, self.p = std, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # every random draw comes from `generator`, so a run (and a resumed run) is reproducible
        dev = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=dev).to(x.device)
        keep = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device) < self.p
        return torch.where(keep[:, None, None, None], (x + self.std * noise).clamp(0, 255), x)


@register("augmentation", "example_noise")
def example_noise(
    std: Annotated[float, Field(gt=0)] = 8.0, p: Annotated[float, Field(ge=0, le=1)] = 0.5
) -> GaussianNoise:
    """Add Gaussian pixel noise (``std`` in 0..255 units) to a fraction ``p`` of the images."""
    return GaussianNoise(std, p)
