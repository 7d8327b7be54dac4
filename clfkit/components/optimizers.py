"""Optimizers. Contract: ``factory(params, device, **args) -> torch.optim.Optimizer`` where
``params`` is a list of parameter-group dicts (regularizers may have edited them) and ``device``
the type of the device the model lives on ("cuda" or "cpu"); a factory may ignore it.

``layer_decay`` and ``head_lr_mult`` are arguments of every built-in optimizer, but clfkit
(clfkit.train.build.build_optimizer, clfkit.train.param_groups) reads them before the factory runs: they
make the parameter groups, each with its ``lr_scale``. The factories receive them and ignore them.

On CUDA the built-ins use the fused kernels (one launch for all parameters instead of several
per tensor); on the CPU torch picks its default (foreach) implementation."""

from __future__ import annotations

import torch
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register

LR = Annotated[float, Field(gt=0, le=10)]
WD = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
# read by clfkit.train.build.build_optimizer, not by the factories (see the module docstring)
LayerDecay = Annotated[
    float,
    Field(
        gt=0,
        le=1,
        description=("layer-wise LR decay: layer i of L learns at lr x layer_decay^(L - i); 1: off"),
    ),
]
HeadMult = Annotated[
    float, Field(gt=0, le=1000, description="the classifier head learns at lr x head_lr_mult")
]


def _fused(device: str):
    return True if device == "cuda" else None  # None: torch's default for the device


@register("optimizer", "sgd")
def sgd(
    params: list,
    device: str = "cpu",
    lr: LR = 0.1,
    *,
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9,
    nesterov: bool = False,
    weight_decay: WD = 0.0,
    layer_decay: LayerDecay = 1.0,
    head_lr_mult: HeadMult = 1.0,
) -> torch.optim.Optimizer:
    """SGD with (optionally Nesterov) momentum."""
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=_fused(device)
    )


@register("optimizer", "adam")
def adam(
    params: list,
    device: str = "cpu",
    lr: LR = 1e-3,
    *,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: WD = 0.0,
    layer_decay: LayerDecay = 1.0,
    head_lr_mult: HeadMult = 1.0,
) -> torch.optim.Optimizer:
    """Adam (L2 weight decay added to the gradient)."""
    return torch.optim.Adam(
        params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=_fused(device)
    )


@register("optimizer", "adamw")
def adamw(
    params: list,
    device: str = "cpu",
    lr: LR = 1e-3,
    *,
    betas: tuple[Beta, Beta] = (0.9, 0.999),
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: WD = 0.01,
    layer_decay: LayerDecay = 1.0,
    head_lr_mult: HeadMult = 1.0,
) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(
        params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=_fused(device)
    )


@register("optimizer", "rmsprop")
def rmsprop(
    params: list,
    lr: LR = 1e-3,
    *,
    alpha: Beta = 0.99,
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0,
    eps: Annotated[float, Field(gt=0)] = 1e-8,
    weight_decay: WD = 0.0,
    layer_decay: LayerDecay = 1.0,
    head_lr_mult: HeadMult = 1.0,
) -> torch.optim.Optimizer:
    """RMSprop."""
    return torch.optim.RMSprop(
        params, lr=lr, alpha=alpha, momentum=momentum, eps=eps, weight_decay=weight_decay
    )
