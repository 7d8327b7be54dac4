"""clfkit-airbench's own tests: entry point, contracts, shapes, the augmentation's law."""

from __future__ import annotations

import torch

from clfkit import registry


def test_found_through_the_entry_point():
    assert not [e for e in registry.REGISTRY.plugin_errors if e.dist == "clfkit-airbench"]
    for kind, name in (
        ("model", "airbench"),
        ("norm", "airbench_bn"),
        ("augmentation", "airbench_flip_translate"),
    ):
        assert registry.get(kind, name).provider == "clfkit-airbench"


def test_model_shapes_and_frozen_norm_scale():
    model = registry.create(
        "model", "airbench", num_classes=7, in_chans=3, image_size=(32, 32), widths=[8, 16, 16], stem_width=6
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model(torch.randn(2, 3, 20, 24)).shape == (2, 7)  # any size with 3 halvings
    bn = model.groups[0].norm1
    assert not bn.weight.requires_grad and bn.bias.requires_grad and bn.momentum == 0.6
    vec = registry.create("norm", "airbench_bn", num_features=5, dim=1)
    assert vec(torch.randn(4, 5)).shape == (4, 5)


def test_flip_translate_moves_whole_images_reproducibly():
    aug = registry.create("augmentation", "airbench_flip_translate", translate=2)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    # each output is a (possibly flipped) shifted crop: its centre 4x4 comes from the input
    for i in range(2):
        centre = a[i, :, 2:6, 2:6]
        cands = [x[i], x[i].flip(-1)]
        assert any(
            torch.equal(centre, c[:, 2 + dy : 6 + dy, 2 + dx : 6 + dx])
            for c in cands
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    same = registry.create("augmentation", "airbench_flip_translate", translate=0, flip=False)
    assert torch.equal(same(x, torch.Generator()), x)
