"""``clfkit predict`` on a big folder: images/s and peak RSS of the whole process (the CLI in a
fresh interpreter, measured by the kernel: wait4's ru_maxrss), for the default settings.

    python bench/predict_scale_bench.py --images 20000 --out bench/results/predict_scale.json

Target (issue 14): 20k small PNGs keep peak RSS under 600 MB, and it does not grow with the
folder (``--images`` at 2000 and 20000 should give about the same peak).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder, report  # noqa: E402
from predict_bench import make_model  # noqa: E402


# A child's ru_maxrss counts what it inherited at fork: forked from this process (torch
# imported for the export) it would report this process's size. So a small launcher forks the
# CLI and reports the CLI's own peak.
LAUNCHER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024)
"""


def run_predict(model: Path, folder: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one ``clfkit predict`` process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "clfkit", "predict", str(model), str(folder), "-o", str(out), *extra]
    r = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True, check=True
    )
    code, seconds, rss = r.stdout.split()
    if int(code):
        raise SystemExit(f"clfkit predict failed ({code})")
    return float(seconds), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", default=None, help="folder for images and model [a temp folder]")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-scale-"))
    model = make_model(work, a.size, a.depth, "imagenet", a.width, 10)
    rows, runs = [], []
    for n in a.images:
        folder = make_folder(work / f"images{n}", n, a.size, 10, layout="flat")
        seconds, rss = run_predict(model, folder, work / "test.txt", ["--batch-size", str(a.batch_size)])
        runs.append({"images": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_mb": rss})
        rows.append({"images": n, "images/s": n / seconds, "peak RSS MB": rss, "s": seconds})
        print(rows[-1], file=sys.stderr, flush=True)
    target = 600.0
    result = {
        "bench": "predict_scale",
        "machine": machine(),
        "settings": {
            "size": a.size,
            "model": f"resnet{a.depth}",
            "width": a.width,
            "batch_size": a.batch_size,
            "workers": "default (all cores, at least 2)",
        },
        "runs": runs,
        "target_peak_rss_mb": target,
        "met": all(r["peak_rss_mb"] < target for r in runs),
    }
    report(
        "predict at scale (whole clfkit predict process)",
        result,
        rows,
        ["images", "images/s", "peak RSS MB", "s"],
        a.out,
    )


if __name__ == "__main__":
    main()
