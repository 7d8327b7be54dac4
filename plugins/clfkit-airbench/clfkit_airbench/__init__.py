"""clfkit-airbench: the fast small-image network of Keller Jordan's cifar10-airbench
("94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv:2404.00498), as clfkit components.

- model ``airbench``: a 2x2 stem conv, three conv groups (conv -> max-pool -> norm -> act ->
  conv -> norm -> act) of widths 64/256/256, global max-pool, a bias-free linear head whose
  logits are scaled by 1/9;
- norm ``airbench_bn``: BatchNorm with the scale frozen at 1 (only the shift learns),
  momentum 0.6, eps 1e-12, as in airbench;
- augmentation ``airbench_flip_translate``: random horizontal flip and random translation by
  up to ``translate`` pixels (reflect padding), per sample, in one batched pass on the
  training device.

Left out from airbench, because clfkit's recipe already covers them or its hooks cannot:
label smoothing 0.2 and Nesterov SGD (recipe settings), the data-dependent whitening init of
the stem, lookahead, test-time flipping and the alternating-flip schedule across epochs.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from clfkit.registry import register

__version__ = "0.1.0"

PosInt = Annotated[int, Field(ge=1)]


# --------------------------------------------------------------------------- norm
class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose per-channel scale stays 1: airbench trains only the shift."""

    def __init__(self, num_features: int, momentum: float, eps: float, dim: int):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.weight.requires_grad_(False)
        self.dim = dim

    def _check_input_dim(self, x):  # 2-d (N, C) vectors are fine too
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-d or 4-d input, got {x.dim()}-d")


@register("norm", "airbench_bn")
def airbench_bn(
    num_features: int,
    dim: int = 2,
    momentum: Annotated[float, Field(gt=0, le=1)] = 0.6,
    eps: Annotated[float, Field(gt=0)] = 1e-12,
) -> nn.Module:
    """BatchNorm with frozen scale (only the bias learns), momentum 0.6: airbench's norm."""
    return FrozenScaleBatchNorm(num_features, momentum, eps, dim)


# --------------------------------------------------------------------------- model
class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int, norm, activation):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1, self.act1 = norm(c_out, dim=2), activation()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding="same", bias=False)
        self.norm2, self.act2 = norm(c_out, dim=2), activation()

    def forward(self, x):
        x = self.act1(self.norm1(self.pool(self.conv1(x))))  # pool before norm: 4x cheaper
        return self.act2(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    def __init__(self, in_chans, num_classes, widths, stem_width, scale, norm, activation):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 2, bias=True), activation())
        groups, c = [], stem_width
        for w in widths:
            groups.append(ConvGroup(c, w, norm, activation))
            c = w
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(c, num_classes, bias=False)
        self.scale = scale
        for m in self.modules():  # airbench: the first in_channels filters of each 3x3 conv
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):  # start as the identity
                nn.init.dirac_(m.weight.data[: m.in_channels])

    def forward(self, x):
        x = self.groups(self.stem(x))
        x = F.adaptive_max_pool2d(x, 1).flatten(1)  # airbench's MaxPool2d(3) at 32 px, any size here
        return self.head(x) * self.scale


@register("model", "airbench")
def airbench(
    num_classes: int,
    in_chans: int,
    norm: str | dict = "airbench_bn",
    activation: str | dict = "gelu",
    widths: list[PosInt] = [64, 256, 256],
    stem_width: PosInt = 24,
    scale: Annotated[float, Field(gt=0)] = 1 / 9,
) -> nn.Module:
    """airbench94 (Jordan 2024): a 2x2 stem and three conv groups; 94% on CIFAR-10 in seconds.

    ``widths`` are the three groups' channels (airbench96 uses 128/384/512); ``scale``
    multiplies the logits (airbench: 1/9). ``norm`` defaults to ``airbench_bn``.
    """
    return AirbenchNet(in_chans, num_classes, list(widths), stem_width, scale, norm, activation)


# --------------------------------------------------------------------------- augmentation
class FlipTranslate:
    """Batched: x is float (N, C, H, W) in 0..255 on the training device."""

    batched = True

    def __init__(self, translate: int, flip: bool):
        self.translate, self.flip = translate, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        dev = generator.device if generator is not None else x.device

        def draw(high: int) -> torch.Tensor:  # per-sample integers in [0, high), from the generator
            return torch.randint(high, (n,), generator=generator, device=dev).to(x.device)

        if self.flip:
            x = torch.where((draw(2) == 1)[:, None, None, None], x.flip(-1), x)
        t = self.translate
        if t == 0:
            return x
        padded = F.pad(x, (t, t, t, t), mode="reflect")
        dy, dx = draw(2 * t + 1), draw(2 * t + 1)
        rows = torch.arange(h, device=x.device)[None] + dy[:, None]  # (N, H)
        cols = torch.arange(w, device=x.device)[None] + dx[:, None]  # (N, W)
        idx = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # one gather
        return out.permute(0, 3, 1, 2).contiguous()


@register("augmentation", "airbench_flip_translate")
def airbench_flip_translate(
    translate: Annotated[int, Field(ge=0, le=8)] = 2, flip: bool = True
) -> FlipTranslate:
    """Random horizontal flip and translation by up to ``translate`` px (reflect), batched."""
    return FlipTranslate(translate, flip)
