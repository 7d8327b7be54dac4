"""Recipe -> objects: the registry lookups that turn a validated recipe into data, a model,
a loss, an optimizer, a schedule, augmentations and regularizers."""

from __future__ import annotations

import inspect
import os
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from clfkit.train import param_groups
from clfkit import registry
from clfkit.util import yaml_text as yamltext
from clfkit.data import ImageSet, Splits, stratified_split
from clfkit.data.streamed import is_streamed
from clfkit.errors import ClfkitError, DataError, RecipeError, RegistryError
from clfkit.util.safe_names import check_class_names
from clfkit.recipe import IMAGENET, Recipe


class ImageClassifier(nn.Module):
    """The network plus its input normalization: takes images in 0..255 (uint8 or float,
    (N, C, H, W)) and returns logits. Export wraps exactly this module, so the ONNX file
    carries the normalization inside."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x.float() - self.mean) / self.std)


def build_data(recipe: Recipe) -> Splits:
    """Load the dataset and make sure there is a validation split."""
    d = recipe.data
    name, args = registry.split_spec(d.source)
    channels = None if d.channels == "auto" else d.channels
    from clfkit.data import cache  # decoded once per (files, settings); see clfkit/data/cache.py

    settings = {"image_size": list(d.size), "channels": channels, "resize": d.resize, "on_error": d.on_error}

    def load() -> Splits:
        return registry.create(
            "dataset",
            name,
            image_size=d.size,
            channels=channels,
            resize=d.resize,
            seed=recipe.seed,
            on_error=d.on_error,
            **args,
        )

    # a streamed source (WebDataset shards) is read while training: nothing to decode or cache
    streamed = getattr(registry.get("dataset", name).obj, "streamed", False)
    splits: Splits = load() if streamed else cache.cached(name, args, settings, load, storage_mode=d.storage)
    if not isinstance(splits, Splits):
        raise DataError(f"dataset {name!r} returned {type(splits).__name__}, expected clfkit.data.Splits")
    if len(splits.train) == 0:
        raise DataError(f"dataset {name!r} has no training images")
    check_class_names(list(splits.class_names), f"dataset {name!r}")  # a plugin's too
    if splits.val is None and d.val_fraction > 0 and is_streamed(splits.train):
        from clfkit.data.shard_source import hold_out  # whole shards: a stream has no index to split by

        splits.train, splits.val, splits.skipped = hold_out(splits.train, d.val_fraction, splits.skipped)
    elif splits.val is None and d.val_fraction > 0:
        keep, held = stratified_split(splits.train.labels, d.val_fraction, recipe.seed)
        splits.val = splits.train.subset(held)
        splits.train = splits.train.subset(keep)
    return splits


def train_statistics(train: ImageSet) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0..1 scale) of the train split, in blocks: a disk split is
    never loaded whole."""
    from clfkit.data.disk_storage import channel_mean_std

    return channel_mean_std(train.images, limit=50000)


def normalization(recipe: Recipe, train: ImageSet) -> tuple[list[float], list[float]]:
    """Mean and std (0..1 scale) per channel, as the recipe asks."""
    c = train.images.shape[1]
    n = recipe.data.normalize
    if n == "none":
        return [0.0] * c, [1.0] * c
    if n == "imagenet":
        n = IMAGENET
    if n == "auto":
        return train_statistics(train)
    if n == "init":  # the init run's: clfkit.train.init_weights.input_normalization resolves it
        raise RecipeError(
            [("data.normalize", "`init` is resolved from the init run (clfkit.train.init_weights)")]
        )
    mean, std = list(n.mean), list(n.std)
    if c == 1 and len(mean) == 3:  # an RGB recipe run on grayscale data
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    if len(mean) != c or len(std) != c:
        raise DataError(
            f"data.normalize gives {len(mean)} mean / {len(std)} std values, but the data has {c} channel(s)"
        )
    return mean, std


def build_model(
    recipe: Recipe,
    num_classes: int,
    in_chans: int,
    image_size: tuple[int, int],
    mean: list[float],
    std: list[float],
) -> ImageClassifier:
    """The recipe's model for data of this shape, wrapped with its input normalization."""
    name, args = registry.split_spec(recipe.model)
    context = dict(num_classes=num_classes, in_chans=in_chans, image_size=tuple(image_size))
    _check_model_size(name, args, context)
    net = registry.create("model", name, **context, **args)
    _check_output(net, name, num_classes, in_chans, tuple(image_size))
    return ImageClassifier(net, mean, std)


def _check_output(net: nn.Module, name: str, num_classes: int, in_chans: int, size: tuple[int, int]) -> None:
    """The model contract checked on one blank image before any training: (N, num_classes)
    float logits, and a forward that runs (a lazy module's parameters get their shapes here)."""
    who = f"model {name!r} from {registry.get('model', name).provider}"
    x = torch.zeros(1, in_chans, *size)
    was_training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(x)
    except ClfkitError:
        raise
    except Exception as e:  # noqa: BLE001 - the plugin's own code: named, with its error
        raise RegistryError(
            f"{who} failed on a batch of shape {tuple(x.shape)}: {type(e).__name__}: {e}"
        ) from e
    finally:
        net.train(was_training)
    if not (
        isinstance(out, torch.Tensor) and out.is_floating_point() and tuple(out.shape) == (1, num_classes)
    ):
        got = (
            f"a {out.dtype} tensor of shape {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else f"a {type(out).__name__}"
        )
        raise RegistryError(
            f"{who} returned {got} for a batch of shape {tuple(x.shape)}; the model "
            f"contract expects float logits of shape (N, num_classes) = (1, {num_classes})"
        )


def check_model_size(recipe: Recipe, source: str = "recipe") -> None:
    """The model-size cap checked from the recipe alone, before any data is read: with the
    fewest classes (2) and the recipe's channels (3 when auto), a lower bound of its size.
    A RecipeError names ``source`` (the recipe file) like the recipe's other problems."""
    name, args = registry.split_spec(recipe.model)
    channels = 3 if recipe.data.channels == "auto" else recipe.data.channels
    try:
        _check_model_size(name, args, dict(num_classes=2, in_chans=channels, image_size=recipe.data.size))
    except RecipeError as e:
        raise RecipeError(e.problems, source=source) from None


def peek_data(recipe: Recipe) -> tuple[int, int]:
    """(num_classes, in_chans) without reading the data when the dataset can tell (for
    ``recipe check``); falls back to building the data."""
    name, args = registry.split_spec(recipe.data.source)
    peek = getattr(registry.get("dataset", name).obj, "peek", None)
    channels = None if recipe.data.channels == "auto" else recipe.data.channels
    if peek is not None:
        n, c = peek(**args)
        return n, channels or c
    splits = build_data(recipe)
    return splits.num_classes, splits.in_chans


DEFAULT_MAX_PARAMS = 2_000_000_000  # 8 GB of fp32 weights: beyond that, a typo is likelier


def _check_model_size(name: str, args: dict, context: dict) -> None:
    """Refuse a model with more than CLFKIT_MAX_PARAMS parameters before allocating it (an
    mlp's first layer grows with the image: 3x4096x4096 inputs x 1024 = 51 billion), by
    building it first on the meta device, which allocates nothing."""
    if args.get("pretrained") or args.get("weights"):
        return  # loading weights onto the meta device makes no sense (and may download)
    try:
        with torch.device("meta"):
            params = sum(p.numel() for p in registry.create("model", name, **context, **args).parameters())
    except Exception:  # noqa: BLE001 - cannot tell without building it: the real build will say
        return
    cap = _max_params()
    if params > cap:
        c, (h, w) = context["in_chans"], context["image_size"]
        raise RecipeError(
            [
                (
                    "model",
                    (
                        f"{name} for {c}x{h}x{w} images has {params:,} parameters ({params * 4 / 1e9:,.1f} GB as "
                        f"fp32), more than the cap of {cap:,}; use a smaller data.image_size or a model whose "
                        f"size does not grow with the image (cnn, resnet), or raise the cap with "
                        f"CLFKIT_MAX_PARAMS=<count>"
                    ),
                )
            ]
        )


def _max_params() -> int:
    """CLFKIT_MAX_PARAMS read like any value clfkit reads (clfkit.util.yaml_text: 5e9, 2_000_000)."""
    text = os.environ.get("CLFKIT_MAX_PARAMS", "").strip()
    if not text:
        return DEFAULT_MAX_PARAMS
    try:
        value = yamltext.parse_value(text)
    except yamltext.YAMLProblem:
        value = None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ClfkitError(
            f"CLFKIT_MAX_PARAMS={text!r} is not a number of parameters "
            f"(e.g. 5e9, or unset for {DEFAULT_MAX_PARAMS:,})"
        )
    return int(value)


def build_loss(recipe: Recipe, num_classes: int, splits: Optional[Splits] = None) -> nn.Module:
    """The recipe's loss; with ``splits``, it may read the train split's class counts and the
    class names (``loss.class_weights: balanced``)."""
    name, args = registry.split_spec(recipe.loss)
    context: dict[str, Any] = {}
    if splits is not None:
        counts = (
            splits.train.class_counts()
            if is_streamed(splits.train)
            else torch.bincount(splits.train.labels.cpu(), minlength=num_classes).tolist()
        )
        context = dict(class_counts=counts, class_names=list(splits.class_names))
    return registry.create("loss", name, num_classes=num_classes, **context, **args)


def build_regularizers(recipe: Recipe) -> list[Any]:
    """The recipe's regularizers, in recipe order."""
    return [
        registry.create("regularizer", name, **args)
        for name, args in map(registry.split_spec, recipe.regularizers)
    ]


def build_optimizer(recipe: Recipe, model: nn.Module, regularizers: list[Any]) -> torch.optim.Optimizer:
    """The recipe's optimizer over the trainable parameters: grouped by LR multiplier
    (optim.layer_decay, optim.head_lr_mult: clfkit.train.param_groups), then by the regularizers'
    ``on_param_groups`` hooks (e.g. no weight decay on norms), which keep each group's
    ``lr_scale``; each group's lr is the optimizer's lr x its lr_scale."""
    name, args = registry.split_spec(recipe.optim)
    layer_decay, head_lr_mult = args.pop("layer_decay", 1.0), args.pop("head_lr_mult", 1.0)
    groups = param_groups.lr_groups(model, layer_decay, head_lr_mult, registry.split_spec(recipe.model)[0])
    for r in regularizers:
        if hasattr(r, "on_param_groups"):
            groups = r.on_param_groups(groups)
    first = next(model.parameters(), None)
    device = first.device.type if first is not None else "cpu"
    optimizer = registry.create("optimizer", name, params=groups, device=device, **args)
    if recipe.train.precision == "fp16":  # the one precision with a GradScaler ("auto" is never fp16)
        optimizer = without_fused_step(optimizer)
    param_groups.apply_lr_scales(optimizer)
    return optimizer


def without_fused_step(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """``optimizer`` rebuilt with torch's default (foreach) step when it was made fused, for
    training under a GradScaler (fp16). Why: a fused optimizer takes the scaler's found_inf
    into its kernel instead of being skipped by the scaler, and torch's fused SGD (torch 2.14,
    torch/optim/sgd.py ``_fused_sgd``: long-standing code, the GPU image's 2.11 has it too)
    allocates the momentum buffers with ``torch.empty_like`` before that kernel runs; when the
    first step overflows (the
    normal case with GradScaler's large initial scale) the kernel skips the step, buffer
    initialization included, and the next step reads uninitialized memory as momentum: the
    weights blow up (1e13 in a minimal check). Unfused, the scaler skips ``step()`` itself and
    no state is made. Applies to any optimizer class whose constructor takes ``fused``
    (plugins' too); it is rebuilt before any step, so there is no state to carry over."""
    if not optimizer.defaults.get("fused"):
        return optimizer
    cls = type(optimizer)
    accepted = inspect.signature(cls).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    groups = [{**g, "fused": None} for g in optimizer.param_groups]
    try:
        return cls(groups, **{**settings, "fused": None})
    except (
        TypeError,
        ValueError,
        RuntimeError,
    ) as e:  # a plugin class that cannot be rebuilt from its defaults
        raise RecipeError(
            [
                (
                    "optim",
                    f"{cls.__name__} was made fused, which fp16 cannot use (a fused step "
                    f"ignores GradScaler's skipped steps), and rebuilding it unfused failed "
                    f"({type(e).__name__}: {e}); use train.precision: bf16, or an optimizer "
                    f"that is not fused",
                )
            ]
        ) from None


def build_schedule(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """The recipe's LR multiplier as a function of the optimizer step."""
    name, args = registry.split_spec(recipe.schedule)
    epochs = recipe.train.epochs
    return registry.create(
        "schedule",
        name,
        total_steps=epochs * steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        **args,
    )


def build_augmentations(
    recipe: Recipe, names: Optional[dict[str, list[str]]] = None
) -> tuple[list[Any], list[Any]]:
    """(per-image CPU transforms, batched transforms), each in recipe order. A batched
    transform listed before a per-image one still runs after it (batched ones run on the
    training device once the batch is assembled). ``names``, if given, receives the recipe
    names under "per_image" and "batched" (for the run log)."""
    per_image, batched = [], []
    for spec in recipe.data.augment:
        name, args = registry.split_spec(spec)
        t = registry.create("augmentation", name, **args)
        is_batched = getattr(t, "batched", False)
        (batched if is_batched else per_image).append(t)
        if names is not None:
            names.setdefault("batched" if is_batched else "per_image", []).append(name)
    return per_image, batched
