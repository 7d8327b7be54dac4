"""First decode (issue 15, item 4): clfkit's folder decode (read, hash, decode, resize, in its
thread pool) against the limit ``one-thread PIL loop rate x cores`` on the same files, for
small PNGs and for JPEGs. Target: ratio >= 0.8.

    python bench/decode_bench.py --images 20000 --out bench/results/decode.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report  # noqa: E402


def pil_loop_rate(paths: list[Path], size: int) -> float:
    """Images/s of the plain loop clfkit cannot beat per core: open, RGB, resize, array."""
    from PIL import Image

    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB").resize((size, size)))
    del a
    return len(paths) / (time.perf_counter() - t0)


def clfkit_rate(root: Path, size: int, n: int) -> float:
    from clfkit.data.folder import load_folder

    t0 = time.perf_counter()
    load_folder(root, (size, size), channels=3)
    return n / (time.perf_counter() - t0)


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
        loop = pil_loop_rate(files[:a.loop_sample], a.size)
        ours = clfkit_rate(root, a.size, len(files))
        rows.append({"format": kind, "images": len(files), "size": a.size, "pil_one_thread_images_per_s": loop,
                     "cores": cores, "limit_images_per_s": loop * cores, "clfkit_images_per_s": ours,
                     "ratio": ours / (loop * cores)})
    result = {"bench": "decode", "machine": machine(), "rows": rows, "target_ratio": 0.8}
    report("first decode: clfkit vs one-thread PIL x cores", result, rows,
           ["format", "images", "pil_one_thread_images_per_s", "limit_images_per_s", "clfkit_images_per_s",
            "ratio"], a.out)


if __name__ == "__main__":
    main()
