"""The built-in ``resnet`` model (He et al.) with ablation switches: depth or blocks per stage,
stem, width, residual on/off, norm, activation, dropout before the classifier, stochastic
depth; its blocks and the ResNet module. The model contract: clfkit.components.models."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn as nn
from pydantic import Field
from typing_extensions import Annotated

from clfkit.components.models import ActSpec, NormSpec, Rate, _init_weights
from clfkit.registry.plugins import register


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, *, norm, activation, residual, drop_path):
        super().__init__()
        self.bn1, self.bn2 = norm(planes, dim=2), norm(planes, dim=2)
        bias = _no_norm(self.bn1)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=bias)
        self.act1 = activation()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=bias)
        self.act2 = activation()
        self.residual = residual
        self.drop_path = DropPath(drop_path)
        self.downsample = _shortcut(cin, planes, stride, norm) if residual else None

    def last_layers(self):
        return self.conv2, self.bn2

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        if self.residual:
            out = self.drop_path(out) + (x if self.downsample is None else self.downsample(x))
        return self.act2(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, *, norm, activation, residual, drop_path):
        super().__init__()
        out = planes * 4
        self.bn1, self.bn2, self.bn3 = norm(planes, dim=2), norm(planes, dim=2), norm(out, dim=2)
        bias = _no_norm(self.bn1)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=bias)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=bias)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=bias)
        self.act1, self.act2, self.act3 = activation(), activation(), activation()
        self.residual = residual
        self.drop_path = DropPath(drop_path)
        self.downsample = _shortcut(cin, out, stride, norm) if residual else None

    def last_layers(self):
        return self.conv3, self.bn3

    def forward(self, x):
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.residual:
            y = self.drop_path(y) + (x if self.downsample is None else self.downsample(x))
        return self.act3(y)


def _shortcut(cin, cout, stride, norm):
    if stride == 1 and cin == cout:
        return None
    n = norm(cout, dim=2)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=_no_norm(n)), n)


def _no_norm(layer: nn.Module) -> bool:
    """Convs before a norm need no bias (the norm's shift replaces it); without one they do."""
    return isinstance(layer, nn.Identity)


RESNET_DEPTHS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    14: ("basic", [1, 2, 2, 1]),
    18: ("basic", [2, 2, 2, 2]),
    26: ("basic", [2, 3, 4, 3]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
    152: ("bottleneck", [3, 8, 36, 3]),
}


class ResNet(nn.Module):
    def __init__(
        self,
        num_classes,
        in_chans,
        *,
        layers,
        block,
        stem,
        width,
        residual,
        norm,
        activation,
        drop_rate,
        drop_path,
        zero_init_last,
    ):
        super().__init__()
        Block = BasicBlock if block == "basic" else Bottleneck
        widths = [max(1, int(round(w * width))) for w in (64, 128, 256, 512)]
        c = widths[0]
        n = norm(c, dim=2)
        if stem == "imagenet":  # 7x7 stride 2 + max-pool: 4x smaller feature maps
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, c, 7, 2, 3, bias=_no_norm(n)), n, activation(), nn.MaxPool2d(3, 2, 1)
            )
        elif stem == "cifar":  # 3x3 stride 1, no pool: full resolution (slow, accurate on 32px)
            self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, 1, 1, bias=_no_norm(n)), n, activation())
        else:  # "small": 3x3 stride 2, no pool: a 2x reduction, between the two
            self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, 2, 1, bias=_no_norm(n)), n, activation())
        total = sum(layers)
        stages, idx, cin = [], 0, c
        for i, (n, planes) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                dp = drop_path * idx / max(1, total - 1)
                blocks.append(
                    Block(
                        cin, planes, stride, norm=norm, activation=activation, residual=residual, drop_path=dp
                    )
                )
                cin = planes * Block.expansion
                idx += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin
        _init_weights(self)
        if zero_init_last:  # each residual branch starts as identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    conv, last = m.last_layers()
                    # without an affine norm, zero the branch's last conv instead (Fixup-style)
                    target = last if getattr(last, "weight", None) is not None else conv
                    nn.init.zeros_(target.weight)

    def cam_target_layer(self) -> list[nn.Module]:
        """Grad-CAM's layer (clfkit.run.gradcam): the last stage (the last map before pooling),
        then the earlier ones, for small images whose last stage is 1x1."""
        return list(reversed(self.stages))

    def group_matcher(self, coarse: bool = False) -> dict:
        # the stem, then each block (coarse: each stage); fc, unmatched, is the top layer
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"}

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(self.drop(torch.flatten(self.pool(x), 1)))


def _resnet_depth(block: str, layers: list[int]) -> int:
    """Weighted layers: stem conv + 2 or 3 convs per block + the classifier."""
    return 2 + (2 if block == "basic" else 3) * sum(layers)


def _feature_sizes(image_size: tuple[int, int], stem: str, layers: list[int]) -> list[tuple[int, int]]:
    """Spatial size after the stem and after each stage (each stride-2 step is ceil(h / 2))."""
    half = lambda hw: ((hw[0] + 1) // 2, (hw[1] + 1) // 2)  # noqa: E731
    hw = tuple(image_size)
    hw = half(half(hw)) if stem == "imagenet" else half(hw) if stem == "small" else hw
    sizes = [hw]
    for i, n in enumerate(layers):
        if i > 0 and n > 0:
            hw = half(hw)
        sizes.append(hw)
    return sizes


@register("model", "resnet")
def resnet(
    num_classes: int,
    in_chans: int,
    image_size: tuple[int, int] = (224, 224),
    *,
    norm: NormSpec = "batch",
    activation: ActSpec = "relu",
    depth: Optional[Literal[10, 14, 18, 26, 34, 50, 101, 152]] = None,
    layers: Optional[list[Annotated[int, Field(ge=0)]]] = None,
    block: Optional[Literal["basic", "bottleneck"]] = None,
    stem: Literal["imagenet", "cifar", "small"] = "imagenet",
    width: Annotated[float, Field(gt=0, le=8)] = 1.0,
    residual: bool = True,
    drop_rate: Rate = 0.0,
    drop_path: Rate = 0.0,
    zero_init_last: bool = False,
) -> nn.Module:
    """ResNet (He et al.) with ablation switches: depth (18 when neither depth nor layers is
    given) or blocks per stage, stem, width, residual on/off, norm, activation, dropout before
    the classifier (drop_rate), stochastic depth (drop_path)."""
    if layers is None:
        default_block, layers = RESNET_DEPTHS[depth or 18]
        block = block or default_block
    elif len(layers) != 4:
        raise ValueError(f"layers must give blocks for 4 stages, got {layers}")
    block = block or "basic"
    if depth is not None and _resnet_depth(block, layers) != depth:
        raise ValueError(
            f"depth {depth} contradicts block {block!r} with layers {list(layers)}, which make "
            f"a ResNet-{_resnet_depth(block, layers)}; give depth or layers, not both"
        )
    if not residual and (drop_path > 0 or zero_init_last):
        raise ValueError(
            "drop_path and zero_init_last act on residual branches; with residual: false "
            "they would silently do nothing (or zero the whole network): unset them"
        )
    sizes = _feature_sizes(image_size, stem, layers)
    if min(sizes[-1]) == 1 and isinstance(norm(4, dim=2), nn.InstanceNorm2d):
        raise ValueError(
            f"at {image_size[0]}x{image_size[1]} with stem {stem!r} the last stage runs at "
            f"1x1, where instance norm has one value per channel and outputs zeros; "
            f"use stem: cifar or small, or larger images"
        )
    return ResNet(
        num_classes,
        in_chans,
        layers=list(layers),
        block=block,
        stem=stem,
        width=width,
        residual=residual,
        norm=norm,
        activation=activation,
        drop_rate=drop_rate,
        drop_path=drop_path,
        zero_init_last=zero_init_last,
    )
