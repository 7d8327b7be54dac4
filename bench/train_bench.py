"""Training throughput: clfkit's epoch (folder dataset -> decoded-data cache -> in-memory uint8
-> batched augmentation on the device -> step) against the model-only limit of the same model
and settings (synthetic uint8 tensors already on the device: cast, forward, backward, step).

For each image size, stem and compile setting it trains the same recipe with clfkit, averages
the epochs after the first, then times the model alone in the same process. The ratio
pipeline / model-only is the figure; the issue's target on a GPU is >= 0.95.

    # GPU machine (defaults: 20k images, 32 and 64 px, both stems, compile off and on)
    python bench/train_bench.py --out $OUT/train.json
    # the 64x64, 100-class, 100k-image, 25-epoch ResNet-18 study, wall time with evaluation
    python bench/train_bench.py --study --out $OUT/study.json
    # CPU smoke run (minutes): small data, a narrow model, two epochs
    python bench/train_bench.py --images 512 --sizes 32 --width 0.25 --epochs 2 --model-steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report  # noqa: E402


def recipe_for(root: Path, size: int, stem: str, compile_: bool, a, classes: int):
    from clfkit.recipe import validate_recipe

    return validate_recipe(
        {
            "name": f"bench-{size}-{stem}-{'compile' if compile_ else 'eager'}",
            "data": {
                "source": {"name": "folder", "root": str(root)},
                "image_size": size,
                "val_fraction": a.val_fraction,
                "normalize": "imagenet",
                "augment": [{"name": "HorizontalFlip"}, {"name": "PadCrop", "padding": max(2, size // 8)}],
            },
            "model": {"name": "resnet", "depth": 18, "stem": stem, "width": a.width},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {
                "epochs": a.epochs,
                "batch_size": a.batch_size,
                "compile": compile_,
                "device": a.device,
            },
        }
    )


def model_only(recipe, size: int, classes: int, steps: int, warmup: int) -> dict:
    """images/s of cast + forward + backward + optimizer step on synthetic on-device uint8
    batches: the same model, precision, memory format, optimizer and compile setting."""
    import torch

    from clfkit.train.build import build_loss, build_model, build_optimizer
    from clfkit.train.engine.runtime import resolve_runtime

    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    b = recipe.train.batch_size
    model = build_model(recipe, classes, 3, (size, size), [0.5] * 3, [0.25] * 3).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(recipe, model, [])
    loss_fn = build_loss(recipe, classes).to(rt.device)
    net = torch.compile(model) if recipe.train.compile else model
    x8 = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, device=rt.device)
    y = torch.randint(0, classes, (b,), device=rt.device)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)

    def step():
        x = x8.float()
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return {"images_per_s": steps * b / (time.perf_counter() - t0), "warmup_s": warm_s}


def run_one(root: Path, size: int, stem: str, compile_: bool, a, classes: int, out: Path) -> dict:
    from clfkit.run.reader import read_history
    from clfkit.train.trainer import train

    recipe = recipe_for(root, size, stem, compile_, a, classes)
    res = train(recipe, out, quiet=True)
    rows = read_history(res.run_dir)  # the one metrics.jsonl reader (skips and warns about a bad line)
    later = rows[1:] or rows  # the first epoch pays for warm-up (cudnn autotune, compile)
    pipeline = sum(r["images_per_s"] for r in later) / len(later)
    limit = model_only(recipe, size, classes, a.model_steps, a.warmup_steps + (20 if compile_ else 0))
    s = res.summary
    return {
        "size": size,
        "stem": stem,
        "compile": compile_,
        "train_images": s["train_images"],
        "epochs": len(rows),
        "pipeline_images_per_s": pipeline,
        "first_epoch_images_per_s": rows[0]["images_per_s"],
        "model_only_images_per_s": limit["images_per_s"],
        "ratio": pipeline / limit["images_per_s"],
        "data_seconds": s["data_seconds"],
        "wall_seconds": s["wall_seconds"],
        "compile_seconds": s.get("compile_seconds"),
        "epochs_averaged": len(later),
        "device": s["device"],
        "precision": s["precision"],
    }


def study(a, work: Path) -> dict:
    """The reports' study shape: 100k 64x64 images, 100 classes, 25 epochs, ResNet-18,
    evaluation included; wall time from the trainer's summary."""
    from clfkit.recipe import validate_recipe
    from clfkit.train.trainer import train

    root = make_folder(work / "study", a.images, 64, classes=100)
    r = validate_recipe(
        {
            "name": "study",
            "data": {
                "source": {"name": "folder", "root": str(root)},
                "image_size": 64,
                "val_fraction": 0.1,
                "normalize": "imagenet",
                "augment": [{"name": "HorizontalFlip"}, {"name": "PadCrop", "padding": 8}],
            },
            "model": {"name": "resnet", "depth": 18, "stem": a.stems[0], "width": a.width},
            "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "schedule": {"name": "cosine"},
            "train": {
                "epochs": a.epochs,
                "batch_size": a.batch_size,
                "compile": a.compile[-1],
                "device": a.device,
            },
        }
    )
    t0 = time.perf_counter()
    res = train(r, work / "runs", quiet=False)
    wall = time.perf_counter() - t0
    s = res.summary
    return {
        "images": a.images,
        "epochs": a.epochs,
        "stem": a.stems[0],
        "compile": a.compile[-1],
        "wall_seconds": wall,
        "train_seconds": s["train_seconds"],
        "data_seconds": s["data_seconds"],
        "best_val_acc": s["best_val_acc"],
        "device": s["device"],
        "target_seconds": 240,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--images", type=int, default=None, help="images per dataset [20000; 100000 with --study]"
    )
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--stems", default="cifar,imagenet", help="cifar = 3x3 stride-1 stem, no max-pool")
    ap.add_argument("--compile", default=None, help="off,on [off,on on a GPU; off on a CPU]")
    ap.add_argument("--epochs", type=int, default=None, help="[4; 25 with --study]")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--model-steps", type=int, default=50, help="timed steps of the model-only limit")
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--study", action="store_true", help="time the 100k/100-class/25-epoch study instead")
    ap.add_argument("--work", default=None, help="folder for datasets, cache and runs [a temp folder]")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()

    import torch

    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-train-"))
    os.environ["CLFKIT_CACHE_DIR"] = str(work / "cache")  # the bench's own cache, not ~/.cache
    os.environ.setdefault("CLFKIT_CACHE", "1")
    a.images = a.images or (100_000 if a.study else 20_000)
    a.epochs = a.epochs or (25 if a.study else 4)
    a.stems = a.stems.split(",")
    a.compile = [
        c == "on" for c in (a.compile or ("off,on" if torch.cuda.is_available() else "off")).split(",")
    ]
    if a.study:
        r = study(a, work)
        result = {"bench": "study", "machine": machine(), "result": r}
        report(
            "64x64 100-class study",
            result,
            [r],
            ["images", "epochs", "wall_seconds", "train_seconds", "best_val_acc", "target_seconds"],
            a.out,
        )
        return
    rows = []
    for size in map(int, a.sizes.split(",")):
        root = make_folder(work / f"data{size}", a.images, size)
        for stem in a.stems:
            for c in a.compile:
                row = run_one(root, size, stem, c, a, 10, work / "runs")
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    result = {
        "bench": "train",
        "machine": machine(),
        "settings": {
            "images": a.images,
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "width": a.width,
            "model": "resnet18",
            "augment": "HorizontalFlip + PadCrop",
            "model_steps": a.model_steps,
        },
        "rows": rows,
        "target_ratio_gpu": 0.95,
    }
    report(
        "training throughput: clfkit epoch vs model-only limit",
        result,
        rows,
        [
            "size",
            "stem",
            "compile",
            "pipeline_images_per_s",
            "model_only_images_per_s",
            "ratio",
            "data_seconds",
            "compile_seconds",
        ],
        a.out,
    )


if __name__ == "__main__":
    main()
