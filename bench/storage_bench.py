"""``data.storage: disk`` against ``memory`` (issue 15, item 3): peak RSS and training
throughput of one epoch on the same ~2 GB decoded set.

    python bench/storage_bench.py --images 175000 --size 64 --work /work/bench_out/storage \\
        --out bench/results/storage.json

The set is a folder of PNGs (175k x 64x64 RGB = 2.15 GB decoded): ``--unique`` generated
images, hard-linked under new names up to ``--images`` files (generating 175k distinct images
takes 20 minutes on a loaded 2-core VM; every file is still read, hashed and decoded on its
own), so the disk path measured is the real one: the first decode streams into the cache
entry's .npy file, later runs check the entry (hash, read in blocks) and train from it. Each
run is a fresh interpreter started by a small launcher (a process's ru_maxrss keeps the peak
of what it was before exec), and reports its own peak RSS (``getrusage(RUSAGE_SELF)``).
``children_peak_rss_mb`` is RUSAGE_CHILDREN's largest child, which for a forked child includes
the pages it shared with its parent at the fork (``import torch`` runs ``ldconfig -p`` from a
~430 MB interpreter), so it says little about the decode workers' own memory. Runs, in order:

- ``disk, first decode``: empty cache; decode (every core) into the entry, then 1 epoch.
- ``disk``: the entry exists; 1 epoch read from it.
- ``memory``: the same entry loaded into memory (only when 3x the set fits in available memory).

The model is deliberately tiny (softmax regression) so the data path, not the model, sets the
pace. The entry's pages sit in the kernel's page cache after the first run (not in the
process): the disk figures are the read path's, not a cold device's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report  # noqa: E402

LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""

CHILD = """
import json, os, resource, sys, time
from clfkit.run.reader import read_history
from clfkit.recipe import validate_recipe
from clfkit.train.trainer import train
root, storage, out, size, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
recipe = validate_recipe({"name": "storage_bench", "data": {"source": {"name": "folder", "root": root},
    "image_size": size, "storage": storage, "val_fraction": 0.1},
    "model": {"name": "linear"}, "optim": {"name": "sgd", "lr": 0.01},
    "train": {"epochs": 1, "batch_size": batch, "device": "cpu"}})
def rss_mb():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
load, imports_rss = os.getloadavg()[0], rss_mb()
t0 = time.perf_counter()
run = train(recipe, out, quiet=True)
wall = time.perf_counter() - t0
row = read_history(run.run_dir)[-1]
s = run.summary
print("RESULT", json.dumps({"storage": storage, "train_images": s["train_images"], "val_images": s["val_images"],
    "data_seconds": s["data_seconds"], "train_seconds": s["train_seconds"], "wall_seconds": round(wall, 1),
    "train_images_per_s": row.get("images_per_s"),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    "rss_after_imports_mb": imports_rss,
    "heavy_modules_loaded": [m for m in ("torch._dynamo", "triton", "sympy", "torch._inductor", "matplotlib",
                                         "tensorboard", "timm", "albumentations", "onnx", "onnxruntime") if m in sys.modules],
    "load_avg_1m_before_after": [load, os.getloadavg()[0]]}))
"""


def run_child(root: Path, storage: str, out: Path, size: int, batch: int, cache: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CLFKIT_CACHE_DIR": str(cache),
        "CLFKIT_CACHE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    cmd = [sys.executable, "-c", CHILD, str(root), storage, str(out), str(size), str(batch)]
    r = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{storage} run failed:\n{r.stderr[-3000:]}")
    line = next(x for x in r.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def linked_folder(root: Path, n: int, unique: int, size: int) -> Path:
    """``unique`` generated PNGs in root/train/<class>/, then hard links to them (in the same
    class folder, under new names) up to ``n`` files."""
    make_folder(root, unique, size)
    originals = sorted((root / "train").rglob("*.png"))[:unique]
    for i in range(n - len(list((root / "train").rglob("*.png")))):
        src = originals[i % unique]
        os.link(src, src.parent / f"link_{i:07d}.png")
    return root


def _available() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=175000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument(
        "--unique", type=int, default=20000, help="distinct images generated; the rest are hard links"
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", default=None, help="folder for the images, cache and runs [a temp folder]")
    ap.add_argument("--keep", action="store_true", help="keep the images and cache afterwards")
    ap.add_argument("--no-memory", action="store_true", help="skip the storage: memory run")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-storage-"))
    root = linked_folder(work / "images", a.images, min(a.unique, a.images), a.size)
    cache, runs = work / "cache", work / "runs"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    decoded_gb = a.images * 3 * a.size * a.size / 1e9
    rows = [
        {"run": "disk, first decode", **run_child(root, "disk", runs / "d0", a.size, a.batch_size, cache)},
        {"run": "disk", **run_child(root, "disk", runs / "d1", a.size, a.batch_size, cache)},
    ]
    if not a.no_memory and _available() > 3 * decoded_gb * 1e9:
        rows.append({"run": "memory", **run_child(root, "memory", runs / "m", a.size, a.batch_size, cache)})
        rows[-1]["disk_throughput_vs_memory"] = rows[1]["train_images_per_s"] / rows[-1]["train_images_per_s"]
    result = {
        "bench": "storage",
        "machine": machine(),
        "images": a.images,
        "size": a.size,
        "decoded_gb": round(decoded_gb, 3),
        "unique_images": min(a.unique, a.images),
        "batch_size": a.batch_size,
        "model": "linear",
        "rows": rows,
        "target": "peak RSS of a storage: disk run on a 2 GB decoded set < 1 GB",
    }
    report(
        "data.storage: disk vs memory, 1 epoch",
        result,
        rows,
        [
            "run",
            "train_images",
            "data_seconds",
            "train_images_per_s",
            "peak_rss_mb",
            "rss_after_imports_mb",
            "children_peak_rss_mb",
            "load_avg_1m_before_after",
        ],
        a.out,
    )
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
