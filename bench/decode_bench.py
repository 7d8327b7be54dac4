"""First decode (issue 15, item 4): clfkit's folder decode (scan, read, hash, decode, resize,
in one process per core writing straight into shared memory) against the limit ``one-thread
PIL loop rate x cores`` on the same files, for small PNGs and for JPEGs. Target: ratio >= 0.8.

The one-thread loop is timed before and after clfkit's decode (their mean is the limit), so a
machine whose load changes during the run shows it; the load average is recorded with each
row. ``clfkit_one_process`` is clfkit's per-file work (hash, EXIF, mode checks included) in
one process on the same sample as the loop: its ratio to the loop is clfkit's per-image
overhead beyond PIL's own.

    python bench/decode_bench.py --images 20000 --out bench/results/decode.json
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decode workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pil_loop_rate(paths: list[Path], size: int) -> tuple[float, float]:
    """(images/s, images per CPU second) of the plain loop clfkit cannot beat per core: open,
    RGB, resize, array."""
    from PIL import Image

    t0, c0 = time.perf_counter(), _cpu_seconds()
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((size, size)))
    del a
    return len(paths) / (time.perf_counter() - t0), len(paths) / (_cpu_seconds() - c0)


def one_process_rate(paths: list[Path], size: int) -> float:
    """clfkit's per-file decode in this process, no pool: the same work per image as the pool's."""
    from clfkit.data.decode_pool import Output, decode_into

    out = Output(len(paths), (3, size, size))
    t0 = time.perf_counter()
    decode_into(paths, (size, size), 3, "squash", out, workers=1)
    return len(paths) / (time.perf_counter() - t0)


def clfkit_rate(root: Path, size: int, n: int) -> tuple[float, float, float]:
    """(images/s, images per CPU second over every process, cores obtained = CPU s / wall s)."""
    from clfkit.data.folder import load_folder

    t0, c0 = time.perf_counter(), _cpu_seconds()
    load_folder(root, (size, size), channels=3)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    return n / wall, n / cpu, cpu / wall


def to_jpeg(src: Path, dst: Path) -> Path:
    from PIL import Image

    if (dst / ".done").exists():
        return dst
    for p in src.rglob("*.png"):
        out = dst / p.relative_to(src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(out, quality=90)
    (dst / ".done").touch()
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--loop-sample", type=int, default=4000, help="files timed in the one-thread loop")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-decode-"))
    os.environ["CLFKIT_CACHE"] = "0"  # time the decode, never a cache hit
    cores = os.cpu_count() or 1
    png = make_folder(work / "png", a.images, a.size)
    rows = []
    for kind, root in (("png", png), ("jpeg", to_jpeg(png, work / "jpeg"))):
        files = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))
        sample = files[:a.loop_sample]
        load_before = os.getloadavg()[0]
        loop_before, loop_cpu = pil_loop_rate(sample, a.size)
        ours, ours_per_cpu, cores_obtained = clfkit_rate(root, a.size, len(files))
        loop_after, loop_cpu_after = pil_loop_rate(sample, a.size)
        one = one_process_rate(sample, a.size)
        loop = (loop_before + loop_after) / 2
        loop_per_cpu = (loop_cpu + loop_cpu_after) / 2
        rows.append({"format": kind, "images": len(files), "size": a.size, "pil_one_thread_images_per_s": loop,
                     "pil_loop_before_after": [round(loop_before, 1), round(loop_after, 1)],
                     "clfkit_one_process_images_per_s": one, "per_image_overhead": loop / one,
                     "cores": cores, "limit_images_per_s": loop * cores, "clfkit_images_per_s": ours,
                     "ratio": ours / (loop * cores),
                     # under contention the wall-clock ratio says how many cores the scheduler
                     # gave, not how well clfkit uses them: these two separate the two
                     "cores_obtained": cores_obtained,
                     "ratio_per_cpu_second": ours_per_cpu / loop_per_cpu,
                     "load_avg_1m_before_after": [load_before, os.getloadavg()[0]]})
    result = {"bench": "decode", "machine": machine(), "rows": rows, "target_ratio": 0.8}
    report("first decode: clfkit vs one-thread PIL x cores", result, rows,
           ["format", "images", "pil_one_thread_images_per_s", "clfkit_one_process_images_per_s",
            "limit_images_per_s", "clfkit_images_per_s", "ratio", "cores_obtained", "ratio_per_cpu_second"], a.out)


if __name__ == "__main__":
    main()
