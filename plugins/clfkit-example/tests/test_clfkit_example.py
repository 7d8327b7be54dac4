"""clfkit-example's own tests: clfkit finds the components through the entry point, builds each one
(checking its contract) and trains the plugin's recipe for a few steps on the CPU."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from clfkit import registry

COMPONENTS = [
    ("model", "example_net"),
    ("norm", "example_rmsnorm"),
    ("regularizer", "example_l1"),
    ("augmentation", "example_noise"),
]


def test_found_through_the_entry_point():
    errors = [e for e in registry.REGISTRY.plugin_errors if e.dist == "clfkit-example"]
    assert not errors, errors
    for kind, name in COMPONENTS:
        assert registry.get(kind, name).provider == "clfkit-example"


def test_components_build_and_keep_their_contracts():
    model = registry.create(
        "model",
        "example_net",
        num_classes=5,
        in_chans=3,
        image_size=(16, 16),
        norm="example_rmsnorm",
        width=8,
        depth=2,
    )
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)
    for dim, shape in ((2, (2, 4, 3, 3)), (1, (2, 4))):
        norm = registry.create("norm", "example_rmsnorm", num_features=4, dim=dim)
        assert norm(torch.randn(shape)).shape == shape
    loss = registry.create("regularizer", "example_l1", weight=1.0).on_loss(torch.zeros(()), model)
    assert loss > 0
    aug = registry.create("augmentation", "example_noise", std=10.0, p=1.0)
    x = torch.full((4, 3, 8, 8), 128.0)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y) and 0 <= y.min() and y.max() <= 255


def test_recipe_trains(tmp_path):
    from clfkit.recipe import validate_recipe
    from clfkit.train.trainer import train

    data = yaml.safe_load((Path(__file__).parents[1] / "recipe.yaml").read_text())
    data["data"]["source"].update(train_size=64, val_size=16, test_size=16)
    data["data"]["image_size"] = 16
    data["train"].update(epochs=1, batch_size=32)
    summary = train(validate_recipe(data), tmp_path, quiet=True).summary
    assert summary["test_acc"] is not None
