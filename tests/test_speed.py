"""Issue 15 on CPU: the device bench script's driver, and the GPU-path fixes whose logic runs
on a CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASE_KEYS = {"model", "stem", "size", "compile", "precision", "channels_last", "images_per_s",
             "model_only_images_per_s", "ratio", "model_only_steps"}


def test_gpu_bench_smoke_writes_the_json(tmp_path):
    out = tmp_path / "gpu_bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--smoke", "--out", str(out),
                    "--work", str(tmp_path / "work")], check=True, env=env, cwd=tmp_path, timeout=240,
                   capture_output=True)
    result = json.loads(out.read_text())
    assert {"device", "torch", "cases", "study", "date", "target_ratio"} <= set(result)
    assert result["device"] == "cpu" and result["smoke"] is True
    assert {(c["stem"], c["compile"]) for c in result["cases"]} == {("cifar", False), ("imagenet", False)}
    for c in result["cases"]:
        assert CASE_KEYS <= set(c)
        assert c["ratio"] == c["images_per_s"] / c["model_only_images_per_s"]
    st = result["study"]
    assert st["timed_epochs"] == 2 and st["target_epochs"] == 25
    assert st["extrapolated_wall_seconds"] >= st["timed_wall_seconds"]
    prep = result["prep"]["rows"]  # batch preparation alone (eager only in the smoke run)
    assert [r["chain"] for r in prep] == ["flip+padcrop", "flip+padcrop+cutout+mixup_cutmix"]
    assert all(r["eager_ms_per_step"] > 0 and r["batch_size"] == 16 for r in prep)


def test_gpu_sh_is_one_prepared_script():
    text = (ROOT / "bench" / "gpu.sh").read_text()
    assert "NO_ALBUMENTATIONS_UPDATE=1" in text and ".whl/*.whl" in text
    assert "bench/gpu_bench.py" in text and "timeout" in text


# ---------------------------------------------------------------- GPU-path fixes, on CPU
import copy  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402


def test_images_per_epoch_leaves_out_drop_last_tail():
    from clfkit.engine.batches import images_per_epoch, num_batches

    assert images_per_epoch(1000, 256, True) == 768 == num_batches(1000, 256, True) * 256
    assert images_per_epoch(1000, 256, False) == 1000
    assert images_per_epoch(100, 256, True) == 100  # the only batch is never dropped


def test_cuda_generators_are_seeded_per_rank(monkeypatch):
    from clfkit.engine import distributed, runtime

    last = {}
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: last.update(seed=s))
    seeds = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed.WORLD, "rank", rank)
        runtime.seed_everything(5, False)
        seeds.append(last["seed"])  # the CUDA seed in force after seeding
    assert seeds[0] == 5 and seeds[1] != seeds[0]  # rank 0 keeps the recipe's seed


def test_augmentation_generator_from_another_device_kind_does_not_crash():
    from clfkit.engine.snapshot import restore_generator

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
    from clfkit.engine.prep import BatchPrep

    x = torch.rand(4, 3, 8, 8)
    out = PadCropT(2, "reflect")(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = PadCropT(2, "reflect")(x, torch.Generator().manual_seed(0)).contiguous()
    assert torch.equal(out, ref)
    prep = BatchPrep([PadCropT(2, "reflect")], [], 10, channels_last=False)
    xb, _ = prep(torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                 torch.Generator().manual_seed(0))
    assert xb.is_contiguous()


def test_ema_matches_timm_model_ema_v3():
    from timm.utils import ModelEmaV3

    from clfkit.engine.ema import WeightEMA
    from clfkit.recipe import EMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(2, 3, 6, 6))
    cfg = EMA(decay=0.9, warmup=True)
    ours, ref = WeightEMA(model, cfg), ModelEmaV3(copy.deepcopy(model), decay=0.9, use_warmup=True)
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
    from clfkit.engine.runtime import Runtime
    from clfkit.evaluation import evaluate

    class Fixed(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long() % 3, 3).float()

    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    ev = evaluate(Fixed(), ImageSet(images, labels), rt=Runtime(torch.device("cpu"), "fp32", False),
                  loss_fn=nn.CrossEntropyLoss(), num_classes=3, batch_size=4)
    pred = torch.arange(10) % 3
    expect = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(labels, pred):
        expect[t, p] += 1
    assert torch.equal(ev["confusion"], expect) and ev["acc"] == 0.9


def test_sync_bn_converts_in_place_and_is_a_no_op_in_one_process():
    from clfkit.engine import distributed
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
