"""Every built-in model with every norm and activation it accepts, at every input shape the
studies use; regularizers, augmentations and schedules against hand-computed values; study
recipes against the reports' parameter counts. Parametrized over the registry, so a new
built-in component is tested without editing this file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from clfkit import registry
from clfkit.errors import ClfkitError, RecipeError
from clfkit.recipe import load_recipe, validate_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 64, 64)]

# Small-but-real configurations so the product stays fast; every model not listed here is
# built with its defaults.
SMALL = {
    "mlp": {"hidden": [16, 16], "dropout": 0.1, "residual": True},
    "cnn": {"blocks": [{"channels": 4, "pool": "max"}, {"channels": 8, "pool": "avg", "dropout": 0.1}]},
    "resnet": {"depth": 10, "width": 0.0625, "stem": "small", "drop_rate": 0.1, "drop_path": 0.1},
    "timm": {"arch": "test_resnet"},
}


def builtin(kind: str) -> list[str]:
    return [e.name for e in registry.REGISTRY.entries(kind) if e.provider == registry.BUILTIN]


def accepts(model: str, arg: str) -> bool:
    return arg in registry.get("model", model).signature.parameters


def _check(model: str, shape, **args) -> None:
    c, h, w = shape
    torch.manual_seed(0)
    net = registry.create(
        "model", model, num_classes=3, in_chans=c, image_size=(h, w), **{**SMALL.get(model, {}), **args}
    )
    net.train()
    x = torch.randn(2, c, h, w)
    out = net(x)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


MODEL_NORM = [
    (m, n, s) for m in builtin("model") if accepts(m, "norm") for n in builtin("norm") for s in SHAPES
]
MODEL_ACT = [
    (m, a, s)
    for m in builtin("model")
    if accepts(m, "activation")
    for a in builtin("activation")
    for s in SHAPES
]
MODEL_PLAIN = [(m, s) for m in builtin("model") if not accepts(m, "norm") for s in SHAPES]


@pytest.mark.parametrize(
    "model,norm,shape", MODEL_NORM, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_model_with_every_norm(model, norm, shape):
    _check(model, shape, norm=norm)


@pytest.mark.parametrize(
    "model,act,shape", MODEL_ACT, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_model_with_every_activation(model, act, shape):
    _check(model, shape, activation=act)


@pytest.mark.parametrize(
    "model,shape", MODEL_PLAIN, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_model_without_norm_or_activation(model, shape):
    _check(model, shape)


def test_models_without_norm_really_have_none():
    net = registry.create(
        "model", "resnet", num_classes=3, in_chans=3, image_size=(32, 32), **SMALL["resnet"], norm="none"
    )
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) for m in net.modules())
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))  # bias instead
    cnn = registry.create(
        "model",
        "cnn",
        num_classes=3,
        in_chans=3,
        image_size=(32, 32),
        norm="batch",
        blocks=[{"channels": 4}, {"channels": 4, "norm": False, "activation": False}],
    )
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn.modules()) == 1
    assert sum(isinstance(m, nn.ReLU) for m in cnn.modules()) == 1


# --------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("depth,params", [(18, 11_689_512), (34, 21_797_672)])
def test_resnet_matches_torchvision_parameter_counts(depth, params):
    net = registry.create("model", "resnet", num_classes=1000, in_chans=3, image_size=(224, 224), depth=depth)
    assert sum(p.numel() for p in net.parameters()) == params


def test_resnet_depth_by_blocks_per_stage_and_stems():
    make = lambda **kw: registry.create(
        "model", "resnet", num_classes=10, in_chans=3, image_size=(64, 64), **kw
    )  # noqa: E731
    blocks = lambda net: [len(s) for s in net.stages]  # noqa: E731
    assert blocks(make(depth=14)) == [1, 2, 2, 1]
    assert blocks(make(layers=[1, 2, 2, 1])) == [1, 2, 2, 1]
    assert blocks(make(depth=34)) == [3, 4, 6, 3]
    with pytest.raises(ClfkitError, match="ResNet-10"):
        make(depth=18, layers=[1, 1, 1, 1])
    imagenet, cifar = make(stem="imagenet"), make(stem="cifar")
    assert imagenet.stem[0].kernel_size == (7, 7) and isinstance(imagenet.stem[-1], nn.MaxPool2d)
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.stem)
    assert make(width=0.5).num_features == 256


def test_resnet_residual_off_and_zero_init():
    make = lambda **kw: registry.create(
        "model",
        "resnet",
        num_classes=10,
        in_chans=3,
        image_size=(32, 32),  # noqa: E731
        depth=10,
        width=0.125,
        **kw,
    )
    plain = make(residual=False)
    assert all(b.downsample is None and not b.residual for s in plain.stages for b in s)
    zero = make(zero_init_last=True)
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for s in zero.stages for b in s)
    zero_nonorm = make(zero_init_last=True, norm="none")
    assert all(float(b.conv2.weight.detach().abs().sum()) == 0 for s in zero_nonorm.stages for b in s)
    with pytest.raises(ClfkitError, match="residual"):
        make(residual=False, drop_path=0.1)


def test_instance_norm_at_one_pixel_is_refused_clearly():
    with pytest.raises(ClfkitError, match="1x1.*stem: cifar"):
        registry.create(
            "model",
            "resnet",
            num_classes=3,
            in_chans=1,
            image_size=(28, 28),
            norm="instance",
            width=0.0625,
            depth=10,
        )


def test_mlp_residual_and_dropout_kind():
    with pytest.raises(ClfkitError, match="residual needs"):
        registry.create(
            "model", "mlp", num_classes=3, in_chans=1, image_size=(4, 4), hidden=[8, 4], residual=True
        )
    net = registry.create(
        "model",
        "mlp",
        num_classes=3,
        in_chans=1,
        image_size=(4, 4),
        hidden=[8, 8],
        residual=True,
        dropout=0.5,
        dropout_kind="alpha",
    )
    assert net.skip == [False, True]
    assert any(isinstance(m, nn.AlphaDropout) for m in net.modules())


def test_cnn_dropout_kind_and_rate_reach_every_block():
    net = registry.create(
        "model",
        "cnn",
        num_classes=3,
        in_chans=3,
        image_size=(16, 16),
        dropout=0.3,
        dropout_kind="dropout2d",
        blocks=[{"channels": 4}, {"channels": 4, "dropout": 0.1, "dropout_kind": "dropout"}],
    )
    drops = [m for m in net.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    assert [(type(d), d.p) for d in drops] == [(nn.Dropout2d, 0.3), (nn.Dropout, 0.1)]


@pytest.mark.parametrize("recipe,params", [("cifar10_mlp", 3_159_050), ("cifar10_cnn", 3_268_874)])
def test_study_parameter_counts(recipe, params):
    from clfkit.train.model_stats import model_stats

    stats = model_stats(load_recipe(RECIPES / f"{recipe}.yaml"))
    assert stats["params"] == params
    assert stats["macs"] > 0


def test_every_study_recipe_validates():
    for path in sorted(RECIPES.glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("#"), f"{path.name} needs a header comment"
        if "\nsweep:" in text:
            continue  # a sweep file: tests/test_sweep.py plans every combination of it
        load_recipe(path)


# --------------------------------------------------------------------------- regularizers
def test_label_smoothing_values():
    ls = registry.create("regularizer", "label_smoothing", eps=0.1)
    _, y = ls.on_batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), 4)
    assert torch.allclose(y, torch.tensor([[0.925, 0.025, 0.025, 0.025], [0.025, 0.025, 0.925, 0.025]]))


def test_mixup_blends_images_and_labels_with_the_same_lambda():
    torch.manual_seed(0)
    mix = registry.create("regularizer", "mixup", alpha=0.4)
    x = torch.tensor([0.0, 10.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()
    xm, y = mix.on_batch(x, torch.tensor([0, 1]), 2)
    assert torch.allclose(y.sum(1), torch.ones(2))
    # pixel value / 10 is the share of image 1, which must be the share of class 1
    assert torch.allclose(xm[:, 0, 0, 0] / 10, y[:, 1], atol=1e-6)


def test_cutmix_label_share_is_the_pasted_area():
    torch.manual_seed(1)
    cut = registry.create("regularizer", "cutmix", alpha=1.0)
    x = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 1, 8, 8).contiguous()
    for _ in range(5):
        xm, y = cut.on_batch(x, torch.tensor([0, 1]), 2)
        assert torch.allclose(xm.mean((1, 2, 3)), y[:, 1], atol=1e-6)


def test_grad_clip_and_no_decay_groups():
    lin = nn.Linear(3, 2)
    lin.weight.grad = torch.full_like(lin.weight, 3.0)  # norm sqrt(6 * 9) = 7.348...
    lin.bias.grad = torch.zeros_like(lin.bias)
    registry.create("regularizer", "grad_clip", max_norm=1.0).before_step(lin, None)
    total = torch.cat([lin.weight.grad.flatten(), lin.bias.grad]).norm()
    assert math.isclose(float(total), 1.0, rel_tol=1e-4)
    groups = registry.create("regularizer", "no_decay_norm_bias").on_param_groups(
        [{"params": list(lin.parameters()), "weight_decay": 0.1}]
    )
    assert [len(g["params"]) for g in groups] == [1, 1]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"][0] is lin.bias


def test_label_smoothing_twice_is_refused():
    with pytest.raises(RecipeError, match="regularizers.0: label smoothing is already set in loss"):
        validate_recipe(
            {
                "name": "x",
                "model": "linear",
                "loss": {"name": "cross_entropy", "label_smoothing": 0.1},
                "regularizers": ["label_smoothing"],
            }
        )
    validate_recipe({"name": "x", "model": "linear", "regularizers": ["label_smoothing", "mixup"]})


# --------------------------------------------------------------------------- augmentations & schedules
def test_cutout_masks_exactly_size_squared():
    t = registry.create("augmentation", "Cutout", size=4)
    x = torch.ones(64, 1, 32, 32)
    zeros = (t(x, torch.Generator().manual_seed(0)) == 0).sum((1, 2, 3))
    assert zeros.max() == 16 and (zeros <= 16).all()


def test_flip_and_padcrop_keep_pixels():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    flipped = registry.create("augmentation", "HorizontalFlip", p=1.0)(x, torch.Generator())
    assert torch.equal(flipped, x.flip(-1))
    shifted = registry.create("augmentation", "PadCrop", padding=1, mode="constant")(
        x, torch.Generator().manual_seed(0)
    )
    assert shifted.shape == x.shape


def test_albumentations_by_name_and_refusals():
    t = registry.create("augmentation", "CoarseDropout", num_holes_range=(1, 1))
    import numpy as np

    assert t(image=np.zeros((8, 8, 3), np.uint8))["image"].shape == (8, 8, 3)
    with pytest.raises(RecipeError, match="data.augment.0.*not valid"):
        validate_recipe(
            {"name": "x", "model": "linear", "data": {"augment": [{"name": "CoarseDropout", "max_holes": 2}]}}
        )
    with pytest.raises(RecipeError, match="data.normalize"):
        validate_recipe({"name": "x", "model": "linear", "data": {"augment": ["Normalize"]}})


def test_schedules_hand_values():
    f = registry.create(
        "schedule", "step", total_steps=100, steps_per_epoch=10, epochs=10, step_epochs=7, gamma=0.1
    )
    assert [f(s) for s in (0, 69, 70, 139, 140)] == [
        1.0,
        1.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
        pytest.approx(0.01),
    ]
    w = registry.create(
        "schedule", "constant", total_steps=100, steps_per_epoch=10, epochs=10, warmup_epochs=1
    )
    assert [w(0), w(4), w(9), w(50)] == [0.1, 0.5, 1.0, 1.0]
    c = registry.create("schedule", "cosine", total_steps=100, steps_per_epoch=10, epochs=10)
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)
    m = registry.create(
        "schedule", "multistep", total_steps=100, steps_per_epoch=10, epochs=10, milestones=[2, 5], gamma=0.5
    )
    assert [m(19), m(20), m(50)] == [1.0, 0.5, 0.25]
