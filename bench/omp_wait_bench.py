"""How torch's OpenMP threads wait (``OMP_WAIT_POLICY``) against a CPU that something else is
using: the epoch time of a plain PyTorch loop (clfkit's small CNN, 32 px, batch 128, 1,024
images in memory, every core's threads; the median of 5 epochs in each process) with libgomp's default (threads spin while they wait)
and with ``PASSIVE`` (what ``import clfkit`` sets unless the environment says otherwise), each
in a fresh interpreter, alternating, with 0 and then ``--busy`` other processes spinning on the
CPU (standing in for another run, a browser, a shared VM's neighbours).

    python bench/omp_wait_bench.py --rounds 5 --busy 1 --out bench/results/omp_wait.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, report  # noqa: E402

EPOCH = """
import json, time, torch, torch.nn.functional as F
from clfkit import registry
torch.manual_seed(0)
model = registry.create("model", "cnn", num_classes=10, in_chans=3, image_size=(32, 32))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
x, y = torch.rand(1024, 3, 32, 32), torch.randint(0, 10, (1024,))
def epoch():
    t0 = time.perf_counter()
    for i in range(0, 1024, 128):
        loss = F.cross_entropy(model(x[i:i + 128]), y[i:i + 128])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return time.perf_counter() - t0
epoch()
times = sorted(epoch() for _ in range(5))
print(json.dumps({"seconds": times[2], "threads": torch.get_num_threads()}))
"""


def spin() -> None:
    while True:
        pass


def epoch_seconds(policy: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", EPOCH], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--busy", type=int, default=1, help="spinning processes in the second part")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    for busy in (0, a.busy):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for s in spinners:
            s.start()
        try:
            times = {"ACTIVE": [], "PASSIVE": []}
            for _ in range(a.rounds):
                for policy in times:
                    times[policy].append(epoch_seconds(policy)["seconds"])
        finally:
            for s in spinners:
                s.terminate()
        active, passive = median(times["ACTIVE"]), median(times["PASSIVE"])
        rows.append(
            {
                "busy_processes": busy,
                "active_s": round(active, 3),
                "passive_s": round(passive, 3),
                "passive_speedup": round(active / passive, 2),
                "all_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
                "load_1m": os.getloadavg()[0],
            }
        )
    result = {"bench": "omp_wait", "machine": machine(), "rounds": a.rounds, "rows": rows}
    report(
        "OMP_WAIT_POLICY: ACTIVE (spin) vs PASSIVE, small CNN epoch (median of 5 epochs per process, median of rounds)",
        result,
        rows,
        ["busy_processes", "active_s", "passive_s", "passive_speedup", "load_1m"],
        a.out,
    )


if __name__ == "__main__":
    main()
