"""Built-in models: linear, mlp, cnn and any timm architecture (resnet: clfkit.components.resnet).

Contract (see README "Writing a plugin"): ``factory(num_classes, in_chans, image_size, norm,
activation, **own_args) -> nn.Module`` mapping float (N, in_chans, H, W) to (N, num_classes)
logits. ``norm(num_features, dim)`` and ``activation()`` are factories clfkit builds from the
recipe; ``image_size`` is (H, W). Inputs arrive already normalized (mean/std).

Each built-in model says its layers for ``optim.layer_decay`` with timm's
``group_matcher(coarse)`` method (clfkit.train.param_groups): name patterns (or a function) giving
each parameter's layer, stem first; parameters no pattern matches (the classifier) come last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from typing_extensions import Annotated

from clfkit.registry.plugins import register
from clfkit.util.did_you_mean import did_you_mean

NormSpec = Optional[object]  # a norm component spec: "batch" or {name: group, groups: 8}
ActSpec = object
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]
PosInt = Annotated[int, Field(ge=1)]


def _dropout(kind: str, p: float) -> nn.Module:
    if p <= 0:
        return nn.Identity()
    return {"dropout": nn.Dropout, "dropout2d": nn.Dropout2d, "alpha": nn.AlphaDropout}[kind](p)


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- linear / mlp
class Linear(nn.Sequential):
    """Flatten -> Linear (the same state dict as a plain nn.Sequential)."""

    def group_matcher(self, coarse: bool = False) -> dict:
        return {}  # one layer: the classifier


@register("model", "linear")
def linear(num_classes: int, in_chans: int, image_size: tuple[int, int]) -> nn.Module:
    """Softmax regression: one linear layer on the flattened image."""
    h, w = image_size
    return Linear(nn.Flatten(), nn.Linear(in_chans * h * w, num_classes))


class MLP(nn.Module):
    def __init__(
        self, in_features, num_classes, hidden, *, norm, activation, dropout, dropout_kind, residual
    ):
        super().__init__()
        self.flatten = nn.Flatten()
        self.blocks = nn.ModuleList()
        self.skip: list[bool] = []
        prev = in_features
        for width in hidden:
            self.blocks.append(
                nn.Sequential(
                    nn.Linear(prev, width), norm(width, dim=1), activation(), _dropout(dropout_kind, dropout)
                )
            )
            # a skip connection where the widths agree (the "MLP with residual connections" study)
            self.skip.append(residual and prev == width)
            prev = width
        if residual and not any(self.skip):
            raise ValueError(
                f"residual needs a hidden layer as wide as the one before it (a skip "
                f"connection adds input and output), e.g. hidden: [512, 512, 512]; "
                f"got hidden {list(hidden)} on {in_features} input features"
            )
        self.head = nn.Linear(prev, num_classes)

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"blocks": r"^blocks\.(\d+)"}  # one layer per hidden block, then the head

    def forward(self, x):
        x = self.flatten(x)
        for block, skip in zip(self.blocks, self.skip):
            x = x + block(x) if skip else block(x)
        return self.head(x)


@register("model", "mlp")
def mlp(
    num_classes: int,
    in_chans: int,
    image_size: tuple[int, int],
    *,
    norm: NormSpec = "none",
    activation: ActSpec = "relu",
    hidden: list[PosInt] = [1024],
    dropout: Rate = 0.0,
    dropout_kind: Literal["dropout", "alpha"] = "dropout",
    residual: bool = False,
) -> nn.Module:
    """Multi-layer perceptron: per hidden layer Linear -> norm -> activation -> dropout; with
    ``residual``, layers as wide as their input add it back (x + f(x))."""
    h, w = image_size
    return MLP(
        in_chans * h * w,
        num_classes,
        hidden,
        norm=norm,
        activation=activation,
        dropout=dropout,
        dropout_kind=dropout_kind,
        residual=residual,
    )


# --------------------------------------------------------------------------- cnn
class ConvBlock(BaseModel):
    """One conv block of the `cnn` model: conv -> norm -> activation -> dropout -> pool."""

    model_config = ConfigDict(extra="forbid")
    channels: PosInt = Field(description="output channels of the conv")
    kernel: PosInt = 3
    stride: PosInt = 1
    padding: Optional[Annotated[int, Field(ge=0)]] = Field(None, description='null: kernel // 2 ("same")')
    norm: bool = Field(True, description="apply the model's norm in this block")
    activation: bool = Field(True, description="apply the model's activation in this block")
    dropout: Optional[Rate] = Field(None, description="null: the model's dropout")
    dropout_kind: Optional[Literal["dropout", "dropout2d"]] = Field(
        None, description="null: the model's dropout_kind"
    )
    pool: Optional[Literal["max", "avg"]] = Field(None, description="null: no pooling")
    pool_kernel: PosInt = 2
    pool_stride: Optional[PosInt] = Field(None, description="null: pool_kernel")
    pool_padding: Annotated[int, Field(ge=0)] = 0


class CNN(nn.Sequential):
    """features (conv blocks) -> head modules (the same state dict as a plain nn.Sequential);
    ``block_of[i]`` is the conv block of features module ``i``."""

    def __init__(self, features: nn.Sequential, *head: nn.Module, block_of: list[int]):
        super().__init__(features, *head)
        self.block_of = block_of

    def cam_target_layer(self) -> list[nn.Module]:
        """Grad-CAM's layer (clfkit.run.gradcam): the conv features (the last map before the head),
        then each features module from the last back, for when pooling leaves the last map 1x1."""
        return [self[0], *reversed(list(self[0]))]

    def group_matcher(self, coarse: bool = False):
        def layer(name: str) -> tuple[float]:  # "0.<i>.weight": features module i; else the head
            parts = name.split(".")
            return (float(self.block_of[int(parts[1])]),) if parts[0] == "0" else (float("inf"),)

        return layer


def _default_blocks() -> list[ConvBlock]:
    return [ConvBlock(channels=32, pool="max"), ConvBlock(channels=64, pool="max")]


@register("model", "cnn")
def cnn(
    num_classes: int,
    in_chans: int,
    image_size: tuple[int, int],
    *,
    norm: NormSpec = "batch",
    activation: ActSpec = "relu",
    blocks: list[ConvBlock] = _default_blocks(),
    dropout: Rate = 0.0,
    dropout_kind: Literal["dropout", "dropout2d"] = "dropout",
    global_pool: bool = False,
    head_dropout: Rate = 0.0,
) -> nn.Module:
    """Plain CNN from a list of conv blocks (conv -> norm -> activation -> dropout -> pool),
    then flatten (or global average pool) -> dropout -> linear. A block's unset dropout rate
    and kind are the model's ``dropout`` and ``dropout_kind``."""
    layers: list[nn.Module] = []
    block_of: list[int] = []  # features module -> its conv block (for group_matcher)
    c = in_chans
    for k, b in enumerate(blocks):
        b = ConvBlock.model_validate(b) if isinstance(b, dict) else b
        pad = b.kernel // 2 if b.padding is None else b.padding
        layers += [
            nn.Conv2d(c, b.channels, b.kernel, b.stride, pad),
            norm(b.channels, dim=2) if b.norm else nn.Identity(),
            activation() if b.activation else nn.Identity(),
            _dropout(b.dropout_kind or dropout_kind, dropout if b.dropout is None else b.dropout),
        ]
        if b.pool:
            pool = nn.MaxPool2d if b.pool == "max" else nn.AvgPool2d
            layers.append(pool(b.pool_kernel, b.pool_stride or b.pool_kernel, b.pool_padding))
        block_of += [k] * (len(layers) - len(block_of))
        c = b.channels
    features = nn.Sequential(*layers)
    with torch.no_grad():  # the flattened size depends on the image size: measure it
        try:
            n_out = features.eval()(torch.zeros(1, in_chans, *image_size)).numel()
        except (RuntimeError, ValueError) as e:
            raise ValueError(
                f"the conv blocks do not fit {image_size[0]}x{image_size[1]} images "
                f"(the feature map shrinks to nothing): {e}"
            ) from None
    features.train()
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if global_pool else [nn.Flatten()]
    head += [_dropout("dropout", head_dropout), nn.Linear(c if global_pool else n_out, num_classes)]
    model = CNN(features, *head, block_of=block_of)
    _init_weights(model)
    return model


# --------------------------------------------------------------------------- timm
def _timm_arch(name: str) -> str:
    import timm

    if name not in timm.list_models():
        hint = did_you_mean(name, timm.list_models(), cutoff=0.6)
        raise ValueError(f"timm has no architecture {name!r}{hint} (see timm.list_models())")
    return name


def _existing_file(path: Optional[str]) -> Optional[str]:
    if path is not None and not Path(path).is_file():
        raise ValueError(f"weights file {path!r} does not exist (clfkit never downloads weights)")
    return path


@register("model", "timm")
def timm_model(
    num_classes: int,
    in_chans: int,
    image_size: tuple[int, int],
    *,
    arch: Annotated[str, AfterValidator(_timm_arch)],
    weights: Annotated[Optional[str], AfterValidator(_existing_file)] = None,
    weights_min_match: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5,
    drop_rate: Rate = 0.0,
    drop_path_rate: Rate = 0.0,
    **kwargs,
) -> nn.Module:
    """Any timm architecture by name (extra args go to timm.create_model), randomly initialized
    or loaded from a local weights file (.safetensors, a torch state dict or a timm
    checkpoint) through timm's pretrained loader, which adapts the classifier and the first
    conv; never downloads. ``weights_min_match``: the share of the model's tensors the file must
    match (below it the file is another architecture: an error). The model carries the
    loading's receipt as ``weights_receipt`` (the trainer prints it and writes weights.json)."""
    args = dict(
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=drop_rate,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    model = _create_timm(arch, image_size, pretrained=False, **args)
    if weights:
        model = _load_timm_weights(model, arch, image_size, weights, weights_min_match, args)
    return model


def _create_timm(arch: str, image_size: tuple[int, int], **args) -> nn.Module:
    import timm

    try:  # models with a fixed input size (ViTs, ...) take img_size; the others refuse it
        return timm.create_model(arch, img_size=tuple(image_size), **args)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(arch, **args)


def _load_timm_weights(
    model: nn.Module, arch: str, image_size: tuple[int, int], path: str, min_match: float, args: dict
) -> nn.Module:
    """``model`` (fresh) with the weights of ``path``: checked by name and shape first (a file of
    another architecture is an error), then loaded by timm's own pretrained machinery
    (``pretrained_cfg_overlay=dict(file=...)``); where timm refuses the file, by name."""
    from clfkit.train.param_groups import head_names
    from clfkit.train.weights_receipt import compare, read_state_dict, require_match

    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    state = read_state_dict(path, "model.weights")
    first_conv = cfg.get("first_conv") if isinstance(cfg.get("first_conv"), str) else None
    receipt = compare(
        model.state_dict(),
        state,
        source=path,
        field_name="model.weights",
        head=head_names(model),
        first_conv=first_conv and f"{first_conv}.weight",
    )
    require_match(receipt, min_match, "model.weights_min_match")
    classifier = cfg.get("classifier") if isinstance(cfg.get("classifier"), str) else None
    head = state.get(f"{classifier}.weight") if classifier else None
    overlay = dict(file=path, num_classes=int(head.shape[0]) if head is not None else 0)
    conv = state.get(f"{first_conv}.weight") if first_conv else None
    if conv is not None and conv.ndim == 4:
        overlay["input_size"] = (int(conv.shape[1]), *tuple(cfg.get("input_size", (3, 224, 224)))[1:])
    try:
        loaded = _create_timm(arch, image_size, pretrained=True, pretrained_cfg_overlay=overlay, **args)
        receipt.how = "timm pretrained loader (pretrained_cfg_overlay file)"
    except Exception as e:  # noqa: BLE001 - timm's strict load refuses partial files: load by name
        model.load_state_dict({k: state[k] for k in receipt.loaded}, strict=False)
        receipt.how = f"by name and shape (timm's loader refused the file: {str(e).splitlines()[0][:120]})"
        loaded = model
    loaded.weights_receipt = receipt
    return loaded
