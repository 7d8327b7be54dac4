"""Issue 15 on CPU: the GPU-path fixes whose logic runs on a CPU."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

# the device bench script itself: tests/test_gpu_bench.py

# ---------------------------------------------------------------- GPU-path fixes, on CPU


def test_images_per_epoch_leaves_out_drop_last_tail():
    from clfkit.train.engine.batches import images_per_epoch, num_batches

    assert images_per_epoch(1000, 256, True) == 768 == num_batches(1000, 256, True) * 256
    assert images_per_epoch(1000, 256, False) == 1000
    assert images_per_epoch(100, 256, True) == 100  # the only batch is never dropped


def test_cuda_generators_are_seeded_per_rank(monkeypatch):
    from clfkit.train.engine import distributed, runtime

    last = {}
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: last.update(seed=s))
    seeds = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed.WORLD, "rank", rank)
        runtime.seed_everything(5, False)
        seeds.append(last["seed"])  # the CUDA seed in force after seeding
    assert seeds[0] == 5 and seeds[1] != seeds[0]  # rank 0 keeps the recipe's seed


def test_augmentation_generator_from_another_device_kind_does_not_crash():
    from clfkit.train.engine.snapshot import restore_generator

    gen = torch.Generator().manual_seed(3)
    fresh = gen.get_state().clone()
    cuda_like = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state size
    with pytest.warns(UserWarning, match="another device kind"):
        restore_generator(gen, cuda_like)
    assert torch.equal(gen.get_state(), fresh)
    other = torch.Generator().manual_seed(9).get_state()
    restore_generator(gen, other)
    assert torch.equal(gen.get_state(), other)


def test_padcrop_keeps_channels_last_and_values():
    from clfkit.components.augmentations import PadCropT
    from clfkit.train.engine.prep import BatchPrep

    x = torch.rand(4, 3, 8, 8)
    out = PadCropT(2, "reflect")(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = PadCropT(2, "reflect")(x, torch.Generator().manual_seed(0)).contiguous()
    assert torch.equal(out, ref)
    prep = BatchPrep([PadCropT(2, "reflect")], [], 10, channels_last=False)
    xb, _ = prep(
        torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8),
        torch.zeros(4, dtype=torch.long),
        torch.Generator().manual_seed(0),
    )
    assert xb.is_contiguous()


def test_ema_matches_timm_model_ema_v3():
    from timm.utils import ModelEmaV3

    from clfkit.train.engine.ema import WeightEMA
    from clfkit.recipe import EMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(2, 3, 6, 6))
    cfg = EMA(decay=0.9, warmup=True)
    ours, ref = (
        WeightEMA(model, decay=cfg.decay, warmup=cfg.warmup),
        ModelEmaV3(copy.deepcopy(model), decay=0.9, use_warmup=True),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 8):
        model(torch.rand(2, 3, 6, 6)).sum().backward()
        opt.step()
        opt.zero_grad()
        ours.update(step)
        ref.update(model, step=step)
    for (k, a), b in zip(ours.state_dict().items(), ref.module.state_dict().values()):
        assert torch.equal(a, b), k


def test_evaluate_confusion_counts_without_bincount():
    from clfkit.data import ImageSet
    from clfkit.train.engine.runtime import Runtime
    from clfkit.run.evaluation import evaluate

    class Fixed(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long() % 3, 3).float()

    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    ev = evaluate(
        Fixed(),
        ImageSet(images, labels),
        rt=Runtime(torch.device("cpu"), "fp32", False),
        loss_fn=nn.CrossEntropyLoss(),
        num_classes=3,
        batch_size=4,
    )
    pred = torch.arange(10) % 3
    expect = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(labels, pred):
        expect[t, p] += 1
    assert torch.equal(ev["confusion"], expect) and ev["acc"] == 0.9


def test_sync_bn_converts_in_place_and_is_a_no_op_in_one_process():
    from clfkit.train.engine import distributed
    from clfkit.errors import TrainingError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    keys = list(model.state_dict())
    assert distributed.wrap(model, sync_bn=True) is model  # one process: nothing to synchronize
    assert isinstance(model[1], nn.BatchNorm2d)
    with pytest.raises(TrainingError, match="CUDA"):  # DDP refuses SyncBatchNorm on gloo/CPU
        distributed.to_sync_bn(model, torch.device("cpu"))
    distributed.to_sync_bn(model, torch.device("cuda", 0))  # conversion itself needs no GPU
    assert isinstance(model[1], nn.SyncBatchNorm) and list(model.state_dict()) == keys


def test_recipe_has_sync_bn_off_by_default():
    from clfkit.recipe import validate_recipe

    r = validate_recipe({"name": "x", "model": "linear"})
    assert r.train.sync_bn is False
