"""Registry: names, suggestions, duplicates, contracts, argument validation."""

from __future__ import annotations

import pytest
import torch.nn as nn

from clfkit import registry
from clfkit.errors import RecipeError, RegistryError
from clfkit.registry import KINDS, Registry
from clfkit.registry.plugins import REGISTRATIONS


def test_builtin_kinds_and_names():
    for kind in ("model", "norm", "regularizer", "augmentation", "loss", "optimizer", "schedule", "dataset"):
        assert kind in KINDS
    assert {"linear", "mlp", "cnn", "resnet", "timm"} <= set(registry.names("model"))
    assert {"batch", "instance", "group", "layer", "none"} <= set(registry.names("norm"))


def test_unknown_name_suggests_nearest_and_lists_all():
    with pytest.raises(RegistryError) as e:
        registry.get("model", "resnt")
    msg = str(e.value)
    assert "unknown model 'resnt'" in msg
    assert "did you mean 'resnet'" in msg
    assert "Known models:" in msg and "mlp" in msg and "linear" in msg


def test_unknown_kind():
    with pytest.raises(RegistryError, match="unknown kind 'modle'"):
        registry.get("modle", "x")


def test_duplicate_names_both_providers():
    reg = Registry()
    reg._loaded = True  # a private registry: no built-ins, no plugins
    reg.add("norm", "mine", lambda num_features, dim=2: nn.Identity())
    with REGISTRATIONS.loading(reg, "acme-norms", "1.2"), pytest.raises(RegistryError) as e:
        reg.add("norm", "mine", lambda num_features, dim=2: nn.Identity())
    assert "registered twice" in str(e.value)
    assert "clfkit" in str(e.value) and "acme-norms" in str(e.value)


def test_contract_checked_at_registration():
    reg = Registry()
    reg._loaded = True
    with pytest.raises(RegistryError, match="must accept num_classes"):
        reg.add("model", "bad", lambda width=3: nn.Linear(1, 1))
    with pytest.raises(RegistryError, match="not a function or class"):
        reg.add("model", "notcallable", 42)


def test_contract_checked_on_result():
    reg = registry.REGISTRY
    reg.add("model", "_returns_int", lambda num_classes: 3)
    try:
        with pytest.raises(RegistryError, match="returned a int; the model contract expects a torch.nn"):
            reg.create("model", "_returns_int", num_classes=2)
    finally:
        reg.remove("model", "_returns_int")


def test_create_validates_args_and_passes_context():
    m = registry.create("model", "mlp", num_classes=3, in_chans=1, image_size=(4, 4), hidden=[8])
    assert m.head.out_features == 3 and m.blocks[0][0].in_features == 16
    with pytest.raises(RecipeError, match="has no argument 'hiden'; did you mean 'hidden'"):
        registry.create("model", "mlp", num_classes=3, in_chans=1, image_size=(4, 4), hiden=[8])


def test_norm_reference_accepts_name_or_spec():
    m = registry.create(
        "model",
        "mlp",
        num_classes=2,
        in_chans=1,
        image_size=(2, 2),
        hidden=[6],
        norm={"name": "group", "groups": 3},
    )
    gn = m.blocks[0][1]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 3


def test_describe_args_for_show():
    rows = dict((n, (t, d)) for n, t, d in registry.get("model", "resnet").describe_args())
    assert rows["width"][1] == "1.0" and "depth" in rows and "num_classes" not in rows
