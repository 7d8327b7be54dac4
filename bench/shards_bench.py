"""WebDataset shards, streamed (issue 25): pack N small images into shards, train one epoch
from them, and compare with the same images trained from memory; peak RSS of each, and of a
streamed run on a quarter of the shards (RSS should stay flat as the set grows).

    python bench/shards_bench.py --n 100000 --size 32 --out bench/results/shards.json
    python bench/shards_bench.py --n 5000            # a quick run

The images are clfkit's procedural shapes written as PNGs (bench/common.make_folder), packed
with ``clfkit.data.pack.pack`` (what ``clfkit data pack`` runs). Each training run is a fresh
interpreter under a small launcher and reports its own peak RSS (getrusage RUSAGE_SELF; the
loader workers' own peak is RUSAGE_CHILDREN's largest child). The memory run decodes the
folder first (its ``data_seconds``); its ``train_images_per_s`` is the epoch alone, from the
decoded uint8 tensor. The streamed run decodes while it trains, so its epoch rate includes
every decode. Two models: ``linear`` (softmax regression: the data path sets the pace, the
hardest case for streaming) and a small ``cnn`` (closer to a real run, where the model's
compute hides the decode). Ratios are taken within one run of this script; on a shared
machine the absolute figures are upper bounds on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report
from storage_bench import LAUNCHER

MODELS = {
    "linear": {"name": "linear"},
    "cnn": {"name": "cnn", "blocks": [{"channels": 16, "pool": "max"}, {"channels": 32, "pool": "max"}]},
}

CHILD = """
import json, os, resource, sys, time
from clfkit.run.reader import read_history
from clfkit.recipe import validate_recipe
from clfkit.train.trainer import train
source, out, size, batch, model = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
recipe = validate_recipe({"name": "shards_bench", "data": {"source": source, "image_size": size,
    "storage": "memory", "val_fraction": 0}, "model": model, "optim": {"name": "sgd", "lr": 0.01},
    "train": {"epochs": 1, "batch_size": batch, "device": "cpu"}})
load = os.getloadavg()[0]
t0 = time.perf_counter()
run = train(recipe, out, quiet=True)
row = read_history(run.run_dir)[-1]
s = run.summary
print("RESULT", json.dumps({"train_images": s["train_images"], "data_seconds": s["data_seconds"],
    "train_seconds": s["train_seconds"], "wall_seconds": round(time.perf_counter() - t0, 1),
    "train_images_per_s": row.get("images_per_s"),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "children_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    "load_avg_1m_before_after": [load, os.getloadavg()[0]]}))
"""


def run_child(source: dict, out: Path, size: int, batch: int, model: dict, cache: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CLFKIT_CACHE_DIR": str(cache),
        "CLFKIT_CACHE": "0",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    cmd = [
        sys.executable,
        "-c",
        CHILD,
        json.dumps(source),
        str(out),
        str(size),
        str(batch),
        json.dumps(model),
    ]
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"run failed:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100000, help="images")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--shard-size", default="5000")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--models", default="linear,cnn")
    ap.add_argument("--work", default=None, help="folder for images, shards and runs [a temp folder]")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved memory/streamed rounds per model")
    ap.add_argument(
        "--raw",
        default="auto",
        choices=["auto", "never"],
        help="clfkit data pack --raw: small lossless images as decoded uint8 (.npy) samples",
    )
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from clfkit.data.pack import pack

    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-shards-"))
    t0 = time.perf_counter()
    images = make_folder(work / "images", a.n, a.size)
    make_s = time.perf_counter() - t0
    shutil.rmtree(work / "shards", ignore_errors=True)
    t0 = time.perf_counter()
    manifest = pack(str(images), work / "shards", a.shard_size, raw=a.raw)
    pack_s = time.perf_counter() - t0
    names = [s["name"] for s in manifest["shards"] if s["split"] == "train"]
    shards = {"name": "webdataset", "train": [str(work / "shards" / n) for n in names]}
    quarter = {"name": "webdataset", "train": shards["train"][: max(1, len(names) // 4)]}
    rows, ratios = [], {}
    for model in a.models.split(","):
        runs = work / "runs" / model
        ratios[model] = []
        for r in range(a.rounds):  # interleaved: memory, streamed, memory, streamed, ...
            shutil.rmtree(runs, ignore_errors=True)
            memory = run_child(
                {"name": "folder", "root": str(images)},
                runs / "m",
                a.size,
                a.batch_size,
                MODELS[model],
                work / "cache",
            )
            streamed = run_child(shards, runs / "s", a.size, a.batch_size, MODELS[model], work / "cache")
            ratio = round(streamed["train_images_per_s"] / memory["train_images_per_s"], 3)
            ratios[model].append(ratio)
            rows += [
                {"model": model, "round": r + 1, "run": "memory (folder, decoded first)", **memory},
                {
                    "model": model,
                    "round": r + 1,
                    "run": "streamed shards",
                    **streamed,
                    "rate_vs_memory": ratio,
                },
            ]
        small = run_child(quarter, runs / "q", a.size, a.batch_size, MODELS[model], work / "cache")
        rows.append({"model": model, "round": "-", "run": "streamed, 1/4 of the shards", **small})
    result = {
        "bench": "shards",
        "machine": machine(),
        "images": a.n,
        "size": a.size,
        "batch_size": a.batch_size,
        "shards": len(names),
        "shard_size": a.shard_size,
        "raw": a.raw,
        "rounds": a.rounds,
        "make_folder_seconds": round(make_s, 1),
        "pack_seconds": round(pack_s, 1),
        "pack_images_per_s": round(a.n / pack_s, 1),
        "rows": rows,
        "rate_vs_memory_median": {m: statistics.median(v) for m, v in ratios.items()},
        "rate_vs_memory_rounds": ratios,
        "note": "measured on a shared 2-core VM under load from other jobs (load average per run in "
        "load_avg_1m_before_after): absolute times are upper bounds on time; the ratio is taken per "
        "round, memory and streamed run back to back, and the median of the rounds is given",
        "goal": "streamed >= 0.8 of the memory rate at 32 px on 2 cores; peak RSS flat as the set grows",
    }
    report(
        "WebDataset shards streamed vs memory, 1 epoch",
        result,
        rows,
        [
            "model",
            "round",
            "run",
            "train_images",
            "data_seconds",
            "train_images_per_s",
            "rate_vs_memory",
            "peak_rss_mb",
            "children_peak_rss_mb",
            "load_avg_1m_before_after",
        ],
        a.out,
    )
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
