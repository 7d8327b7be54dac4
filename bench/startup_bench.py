"""Start-up time of ``clfkit predict`` against the floor it cannot beat: importing what it needs
(onnxruntime, numpy, PIL). Each command runs in a fresh interpreter; rounds interleave the
commands so machine load hits them alike, and the medians give the ratios.

    python bench/startup_bench.py --rounds 15 --out bench/results/startup.json

Target (issue 12): ``clfkit predict`` starts within 1.5x of ``import onnxruntime, numpy, PIL``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, report  # noqa: E402

COMMANDS = {
    "import onnxruntime, numpy, PIL": ["-c", "import onnxruntime, numpy, PIL"],
    "clfkit predict --help": ["-m", "clfkit", "predict", "--help"],
    # everything predict has imported by the time it opens the model (--help stops earlier)
    "import clfkit.cli, clfkit.deploy.batch_predict, onnxruntime": [
        "-c",
        "import clfkit.cli, clfkit.deploy.batch_predict, onnxruntime",
    ],
    "import torch (for scale)": ["-c", "import torch"],
}
BASE = "import onnxruntime, numpy, PIL"


def run_once(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()
    for args in COMMANDS.values():  # warm the file cache once
        run_once(args)
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    loads: list[float] = []
    for _ in range(a.rounds):  # interleaved: every command once per round
        loads.append(os.getloadavg()[0])
        for k, args in COMMANDS.items():
            times[k].append(run_once(args))
    med = {k: median(v) for k, v in times.items()}
    # per round, each command against the base run moments before it; the median of those
    ratios = {k: median([t / b for t, b in zip(times[k], times[BASE])]) for k in COMMANDS if k != BASE}
    target = 1.5
    result = {
        "bench": "startup",
        "machine": machine(),
        "rounds": a.rounds,
        "median_s": med,
        "all_s": times,
        "load_avg_1m_per_round": loads,
        "note": "shared 2-core VM: times are upper bounds; ratios are per round, then the median",
        "ratio_to_base": ratios,
        "target": target,
        "met": {k: ratios[k] <= target for k in ratios if "torch" not in k},
    }
    rows = [{"command": k, "median s": med[k], "x base": ratios.get(k, 1.0)} for k in COMMANDS]
    report("start-up", result, rows, ["command", "median s", "x base"], a.out)


if __name__ == "__main__":
    main()
