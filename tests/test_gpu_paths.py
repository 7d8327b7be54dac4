"""Issue 24: the GPU trainer's CUDA-only paths, proven on the CPU where torch allows: the
device/precision/placement choices reached by patching torch's device queries, bf16 and fp16
autocast (fp16 with a CPU GradScaler), channels_last and torch.compile through the trainer,
fp16 with a fused optimizer, the deferred NaN guard, GPU memory respected by placement."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import extend_and_resume, tiny_recipe

from clfkit.data import ImageSet, Splits
from clfkit.train.engine import runtime
from clfkit.train.engine.runtime import Runtime
from clfkit.errors import ClfkitError, RecipeError, TrainingError

SMALL = dict(
    data__source__train_size=64,
    data__source__val_size=32,
    data__source__test_size=32,
    train__epochs=1,
    train__batch_size=16,
)


def _plain(recipe):
    """A recipe's train.device, train.precision, train.channels_last: what resolve_runtime takes."""
    t = recipe.train
    return t.device, t.precision, t.channels_last


@pytest.fixture
def cuda_machine(monkeypatch):
    """torch's device queries answer as on a machine with 2 GPUs that have bfloat16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return monkeypatch


@pytest.fixture
def cpu_amp(monkeypatch):
    """Mixed precision allowed on the CPU (clfkit refuses it there; torch runs it): the
    trainer's bf16/fp16 path, autocast and GradScaler included, runs here."""
    monkeypatch.setattr(runtime, "resolve_precision", lambda want, device: "fp32" if want == "auto" else want)


# ---------------------------------------------------------------- device and precision choice
def test_cuda_machine_defaults_to_bf16_channels_last(cuda_machine):
    rt = runtime.resolve_runtime(*_plain(tiny_recipe()))
    assert (rt.device, rt.precision, rt.channels_last) == (torch.device("cuda"), "bf16", True)
    assert runtime.resolve_runtime(*_plain(tiny_recipe(train__device="cuda:1"))).device == torch.device(
        "cuda", 1
    )
    cpu = runtime.resolve_runtime(*_plain(tiny_recipe(train__device="cpu")))  # asked for: the GPU is not used
    assert (cpu.device.type, cpu.precision, cpu.channels_last) == ("cpu", "fp32", False)
    fp16 = runtime.resolve_runtime(*_plain(tiny_recipe(train__precision="fp16", train__channels_last=False)))
    assert (fp16.precision, fp16.channels_last) == ("fp16", False)


def test_cuda_machine_refusals(cuda_machine):
    with pytest.raises(TrainingError, match=r"'cuda:2': only 2 GPU"):
        runtime.resolve_runtime(*_plain(tiny_recipe(train__device="cuda:2")))
    cuda_machine.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert (
        runtime.resolve_runtime(*_plain(tiny_recipe())).precision == "fp32"
    )  # auto: no bf16 -> fp32, not fp16
    with pytest.raises(TrainingError, match="does not support bfloat16; use fp16"):
        runtime.resolve_runtime(*_plain(tiny_recipe(train__precision="bf16")))


def test_grad_scaler_is_made_for_the_run_device_and_fp16_only():
    assert runtime.grad_scaler(Runtime(torch.device("cpu"), "bf16", False)) is None
    scaler = runtime.grad_scaler(Runtime(torch.device("cpu"), "fp16", False))
    assert scaler is not None and scaler.is_enabled()  # a "cuda" scaler on a CPU run disables itself


# ---------------------------------------------------------------- fp16 + a fused optimizer
def _skipped_first_step(optimizer, model):
    """One fp16-style step whose gradients overflow: GradScaler must skip it."""
    scaler = torch.amp.GradScaler("cpu")
    loss = model(torch.full((2, 4), 3e38)).sum() * 1e10  # inf
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clfkit unscales first (gradient clipping), as engine.loop does
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() < 2.0**16  # the step was seen as an overflow and skipped


@pytest.mark.parametrize("optim", [{"name": "sgd", "momentum": 0.9}, {"name": "adamw"}])
def test_fp16_optimizer_keeps_no_state_after_a_skipped_step(monkeypatch, optim):
    """torch's fused SGD allocates its momentum with empty_like before the kernel sees the
    scaler's found_inf, and keeps the garbage after a skipped first step; under fp16 clfkit
    steps unfused, so a skipped step leaves no momentum at all."""
    from clfkit.train.build import build_optimizer
    from clfkit.components import optimizers

    monkeypatch.setattr(optimizers, "_fused", lambda device: True)  # as on CUDA
    model = nn.Linear(4, 2)
    assert build_optimizer(tiny_recipe(optim=optim), model, []).defaults["fused"] is True  # fp32: fused
    opt = build_optimizer(tiny_recipe(optim=optim, train__precision="fp16"), model, [])
    assert not opt.defaults["fused"] and all(not g["fused"] for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    _skipped_first_step(opt, model)
    for p in model.parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        assert buf is None or not buf.any()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fp16_plugin_optimizer_made_fused_is_unfused():
    from clfkit.train.build import without_fused_step

    params = [nn.Parameter(torch.ones(3))]
    opt = torch.optim.SGD(
        [{"params": params, "lr_scale": 0.5}], lr=0.1, momentum=0.9, nesterov=True, fused=True
    )
    plain = without_fused_step(opt)
    assert plain is not opt and not plain.defaults["fused"]
    g = plain.param_groups[0]
    assert (g["lr_scale"], g["nesterov"], g["momentum"], g["params"][0] is params[0]) == (
        0.5,
        True,
        0.9,
        True,
    )
    rms = torch.optim.RMSprop(params)  # no fused variant: untouched
    assert without_fused_step(rms) is rms

    class NeedsWarmup(torch.optim.SGD):  # a plugin's optimizer whose constructor wants more than its defaults
        def __init__(self, params, warmup, **kw):
            super().__init__(params, **kw)

    with pytest.raises(RecipeError, match=r"NeedsWarmup was made fused.*train.precision: bf16"):
        without_fused_step(NeedsWarmup(params, 5, lr=0.1, fused=True))


# ---------------------------------------------------------------- the trainer under autocast
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_trainer_trains_under_autocast_with_channels_last(tmp_path, cpu_amp, monkeypatch, precision):
    from clfkit.components import optimizers
    from clfkit.train.trainer import train

    monkeypatch.setattr(optimizers, "_fused", lambda device: True)  # the optimizer CUDA gets (fp16: unfused)

    r = tiny_recipe(
        **SMALL,
        train__precision=precision,
        train__channels_last=True,
        optim={"name": "sgd", "lr": 0.05, "momentum": 0.9},
    )
    res = train(r, tmp_path, quiet=True)
    s = res.summary
    assert s["precision"] == precision and s["test_acc"] is not None
    row = json.loads((res.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_loss"] == row["train_loss"] and row["train_loss"] < 10  # finite, not blown up
    ckpt = torch.load(res.run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert (ckpt["scaler"] is not None) == (precision == "fp16")  # fp16: the scaler's state, for a resume
    if precision == "fp16":  # and a resume restores it (GradScaler("cpu") as "cuda" on a GPU)
        assert ckpt["scaler"]["scale"] > 0
        resumed = extend_and_resume(res.run_dir, 2)
        assert resumed.summary["epochs_run"] == 2 and resumed.summary["precision"] == "fp16"
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay fp32


def test_trainer_compiles_with_inductor(tmp_path):
    from clfkit.train.trainer import train

    r = tiny_recipe(**SMALL, model={"name": "linear"}, train__compile=True, train__device="cpu")
    res = train(r, tmp_path, quiet=True)
    assert res.summary["compile_seconds"] is not None and res.summary["test_acc"] is not None


# ---------------------------------------------------------------- the deferred NaN guard
def test_deferred_guard_reports_the_first_bad_step_at_the_check(monkeypatch):
    from clfkit.train.engine import guard

    real = guard.checks_each_step
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not real(cuda, "stop") and real(cuda, "skip") and real(cpu, "stop")
    monkeypatch.setattr(guard, "checks_each_step", lambda device, mode: real(cuda, mode))  # as on CUDA
    rt = Runtime(cpu, "bf16", True)
    g = guard.NonFiniteGuard(
        rt, "stop", epoch=0, optimizer=torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    )
    g.check(0)  # nothing recorded yet
    assert g.ok(torch.tensor(1.0), 1, 1) and g.ok(torch.tensor(float("nan")), 3, 3)
    assert g.ok(torch.tensor(float("inf")), 4, 4)  # no host read: the step goes on
    with pytest.raises(TrainingError, match=r"epoch 1, step 3"):
        g.check(4)


# ---------------------------------------------------------------- placement and GPU memory
def _splits(n=6):
    x = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(n) % 2
    names = [f"train/c{i % 2}/ïmg {i}.png" for i in range(n)]
    return Splits(ImageSet(x, y, names), ["a", "b"], val=ImageSet(x[:2].clone(), y[:2].clone(), names[:2]))


def test_placement_on_the_device_keeps_the_file_paths(monkeypatch):
    from clfkit.train.engine import placement

    monkeypatch.delenv(placement.DEVICE_BUDGET_ENV, raising=False)
    splits = _splits()
    placed = placement.place_splits(splits, Runtime(torch.device("meta"), "bf16", True), on_device=True)
    assert (
        placed.on_device
        and placed.train.images.device.type == "meta"
        and placed.val.labels.device.type == "meta"
    )
    assert placed.train.paths == splits.train.paths and placed.val.paths == splits.val.paths
    assert placed.note is None
    host = placement.place_splits(splits, Runtime(torch.device("meta"), "bf16", True), on_device=False)
    assert host.train is splits.train  # per-image CPU augmentation reads from the host


def test_a_disk_split_that_fits_is_read_onto_the_device_with_its_paths(tmp_path, monkeypatch):
    import numpy as np

    from clfkit.data import disk_storage as storage
    from clfkit.train.engine import placement

    monkeypatch.setattr(placement, "COPY_BLOCK_BYTES", 400)  # 2 images of 192 bytes per read: 3 reads
    monkeypatch.setenv(placement.DEVICE_BUDGET_ENV, "1M")
    splits = _splits(5)
    np.save(tmp_path / "train.npy", splits.train.images.numpy())
    disk = ImageSet(storage.DiskImages(tmp_path / "train.npy"), splits.train.labels, splits.train.paths)
    reads = []
    real_read = storage.DiskImages.read
    monkeypatch.setattr(
        storage.DiskImages,
        "read",
        lambda self, pos, **kw: reads.append(len(pos)) or real_read(self, pos, **kw),
    )
    placed = placement.place_splits(
        Splits(disk, ["a", "b"]), Runtime(torch.device("meta"), "bf16", True), True
    )
    assert (
        placed.on_device
        and not storage.is_disk(placed.train.images)
        and placed.train.paths == splits.train.paths
    )
    assert placed.train.images.shape == (5, 3, 8, 8) and reads == [2, 2, 1]
    cpu = placement.place_splits(Splits(disk, ["a", "b"]), Runtime(torch.device("cpu"), "fp32", False), True)
    assert cpu.train is disk
    monkeypatch.setenv(placement.DEVICE_BUDGET_ENV, "100")  # over the budget: read from its file every epoch
    over = placement.place_splits(Splits(disk, ["a", "b"]), Runtime(torch.device("meta"), "bf16", True), True)
    assert over.train is disk and "stay on disk" in over.note and reads == [2, 2, 1]


def test_a_set_over_the_free_gpu_memory_streams_from_host(monkeypatch):
    from clfkit.train.engine import placement

    monkeypatch.delenv(placement.DEVICE_BUDGET_ENV, raising=False)
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: asked.append(d) or (1000, 80 << 30))
    splits = _splits(6)  # 6 x 192 + 2 x 192 bytes of images: over half of 1000 free bytes
    placed = placement.place_splits(splits, Runtime(torch.device("cuda"), "bf16", True), on_device=True)
    assert asked and not placed.on_device and placed.train is splits.train
    assert (
        "do not fit" in placed.note
        and "1600 bytes" in placed.note
        and "500 bytes" in placed.note
        and "host memory" in placed.note
    )
    monkeypatch.setenv(placement.DEVICE_BUDGET_ENV, "1K")  # the override still decides: 1600 B > 1024 B
    assert (
        "CLFKIT_DEVICE_DATA_BUDGET"
        in placement.place_splits(splits, Runtime(torch.device("cuda"), "bf16", True), on_device=True).note
    )
    monkeypatch.setenv(placement.DEVICE_BUDGET_ENV, "lots")
    with pytest.raises(ClfkitError, match="CLFKIT_DEVICE_DATA_BUDGET='lots' is not an amount of memory"):
        placement.place_splits(splits, Runtime(torch.device("cuda"), "bf16", True), on_device=True)


def test_host_batches_for_a_gpu_are_gathered_into_pinned_memory(monkeypatch):
    from clfkit.train.engine import batches

    made = []
    real_empty = torch.empty

    def empty(*shape, **kw):  # pinning needs a CUDA driver: record the request, allocate plainly
        made.append(kw.pop("pin_memory", False))
        return real_empty(*shape, **kw)

    monkeypatch.setattr(batches.torch, "empty", empty)
    data = _splits(6).train
    x = batches.gather(data.images, torch.tensor([4, 1]), pin=True)
    assert made == [True] and torch.equal(x, data.images[[4, 1]])
    assert torch.equal(
        batches.gather(data.labels, torch.tensor([3]), pin=False), data.labels[[3]]
    ) and made == [True]


def test_trainer_imports_without_matplotlib():
    code = "import sys; sys.modules['matplotlib'] = None; import clfkit.train.trainer; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
