"""clfkit's training epoch on a CPU against a plain PyTorch loop: same model, data, batch size.

For each model kind (mlp on 28 px, cnn and resnet18 half width on 32 px; clfkit's procedural
shapes, in memory, no augmentation) it builds a run with clfkit's set-up steps (clfkit.train.prepare: load_data, build:
the run's TrainState and TrainBatches) and times clfkit.train.engine.loop.train_one_epoch, and times
a plain loop written here on the same uint8 tensor: randperm, index, forward (the same
ImageClassifier, normalization inside), cross-entropy, zero_grad, backward, SGD step. Epochs
alternate (clfkit, plain, clfkit, plain, ...) so load that comes and goes hits both alike; the
figure is the median over rounds of (plain epoch time / clfkit epoch time): 1.0 is the plain
loop's rate, the goal is >= 0.95. ``--compile`` adds a contender: clfkit with
train.compile: true (the model and the batch preparation through torch.compile), timed after
its compiling epoch; ``--channels-last`` one with train.channels_last: true (conv models).

    python bench/cpu_train_bench.py --compile --channels-last --out bench/results/cpu_train.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, report  # noqa: E402

KINDS = {
    "mlp": (28, {"name": "mlp", "hidden": [1024]}),
    "cnn": (32, {"name": "cnn"}),
    "resnet": (32, {"name": "resnet", "depth": 18, "stem": "imagenet", "width": 0.5}),
}


def recipe_for(kind: str, a, compile_: bool = False, channels_last: bool = False):
    from clfkit.recipe import validate_recipe

    size, model = KINDS[kind]
    return validate_recipe(
        {
            "name": f"cpu-train-{kind}",
            "seed": 0,
            "data": {
                "source": {
                    "name": "shapes",
                    "num_classes": 10,
                    "train_size": a.images,
                    "val_size": 64,
                    "test_size": 64,
                },
                "image_size": size,
            },
            "model": model,
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "train": {
                "epochs": 100,
                "batch_size": a.batch_size,
                "device": "cpu",
                "compile": compile_,
                "channels_last": channels_last,
            },
        }
    )


def clfkit_epoch(recipe):
    """A function that trains one more epoch through clfkit's engine and returns its seconds."""
    from clfkit.train.engine.loop import train_one_epoch
    from clfkit.train import prepare

    setup = prepare.set_up(recipe, quiet=True, resume=None)
    data = prepare.load_data(recipe, None)
    built = prepare.build(recipe, setup.rt, data, None)
    epoch = iter(range(10**6))

    def run() -> float:
        t0 = time.perf_counter()
        train_one_epoch(built.state, built.batches, next(epoch), progress=lambda n: None)
        return time.perf_counter() - t0

    return run, data.splits.train


def plain_epoch(recipe, train):
    """The same model and data through the loop a PyTorch tutorial writes."""
    import torch
    import torch.nn.functional as F

    from clfkit.train.build import build_model

    torch.manual_seed(0)
    model = build_model(
        recipe, 10, train.images.shape[1], tuple(train.images.shape[2:]), [0.5] * 3, [0.25] * 3
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images, labels, b = train.images, train.labels, recipe.train.batch_size

    def run() -> float:
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(images))
        for i in range(0, len(order), b):
            idx = order[i : i + b]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    return run


def bench_kind(kind: str, a) -> dict:
    import torch

    contenders = {}
    contenders["clfkit"], train = clfkit_epoch(recipe_for(kind, a))
    contenders["plain"] = plain_epoch(recipe_for(kind, a), train)
    if a.compile:
        contenders["compile"], _ = clfkit_epoch(recipe_for(kind, a, compile_=True))
    if a.channels_last and kind != "mlp":
        contenders["channels_last"], _ = clfkit_epoch(recipe_for(kind, a, channels_last=True))
    for run in contenders.values():  # warm up (and compile)
        run()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    loads = []
    for _ in range(a.rounds):
        for k, run in contenders.items():
            times[k].append(run())
        loads.append(os.getloadavg()[0])
    ratio = lambda k: median([p / c for p, c in zip(times["plain"], times[k])])  # noqa: E731
    row = {
        "model": kind,
        "px": KINDS[kind][0],
        "images": a.images,
        "batch": a.batch_size,
        "threads": torch.get_num_threads(),
        "ratio": ratio("clfkit"),
        "plain_s": median(times["plain"]),
        "clfkit_s": median(times["clfkit"]),
        "load_1m": median(loads),
        "rounds": a.rounds,
    }
    for k in ("compile", "channels_last"):
        if k in contenders:
            row[f"{k}_ratio"] = ratio(k)
    print(f"{kind}: clfkit/plain rate {row['ratio']:.3f} (load {row['load_1m']:.1f})", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="mlp,cnn,resnet")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compile", action="store_true", help="also time train.compile: true")
    p.add_argument(
        "--channels-last", action="store_true", help="also time train.channels_last: true (conv models)"
    )
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = [bench_kind(k, a) for k in a.kinds.split(",")]
    from clfkit.deploy.export.quantize import cpu_int8_support

    result = {
        "bench": "cpu_train",
        "machine": machine() | {"cpu_int8": cpu_int8_support()},
        "rows": rows,
        "note": "ratio = median over interleaved rounds of plain-loop epoch time / clfkit epoch time "
        "(1.0: clfkit trains at the plain loop's rate)",
    }
    cols = ["model", "px", "batch", "threads", "ratio", "plain_s", "clfkit_s", "load_1m"]
    report(
        "clfkit vs a plain PyTorch loop (CPU)",
        result,
        rows,
        cols + ["compile_ratio", "channels_last_ratio"],
        a.out,
    )


if __name__ == "__main__":
    main()
