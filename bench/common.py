"""Shared by the bench scripts: synthetic image folders, machine description, JSON + table.

Benches measure ratios inside one run (pipeline against the model-only limit of the same
model and settings, measured minutes apart in the same process), because absolute times on a
shared machine are not comparable across runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
SIMD_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
)


def machine() -> dict[str, Any]:
    """What the figures were taken on, and how busy the machine was when they were."""
    import torch

    cpu, flags = platform.processor() or "", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and cpu == (platform.processor() or ""):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):  # the SIMD sets that decide int8 and conv speed
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in SIMD_FLAGS if f in have]
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _write_chunk(args) -> int:
    from PIL import Image

    from clfkit.data import synthetic

    root, start, n, size, classes, seed, layout = args
    x, y = synthetic.generate(n, size, min(classes, 10), seed + start, 0)
    for i in range(n):
        name = f"img_{start + i:07d}.png"
        label = int(y[i]) if classes <= 10 else (start + i) % classes  # >10: timing-only labels
        d = Path(root) / (f"train/c{label:03d}" if layout == "train" else "")
        Image.fromarray(x[i]).save(d / name)
    return n


def make_folder(
    root: str | Path, n: int, size: int, classes: int = 10, seed: int = 0, layout: str = "train"
) -> Path:
    """``n`` PNG images of clfkit's procedural shapes, written with every core. ``layout``
    "train": root/train/<class>/*.png (a training folder); "flat": root/*.png (for predict).
    Reuses a folder already holding exactly ``n`` images."""
    root = Path(root)
    marker = root / f".bench-{layout}-{n}-{size}-{classes}-{seed}"
    if marker.exists():
        return root
    if layout == "train":
        for c in range(classes):
            (root / "train" / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    else:
        root.mkdir(parents=True, exist_ok=True)
    chunk = 1000
    jobs = [(str(root), s, min(chunk, n - s), size, classes, seed, layout) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        sum(pool.map(_write_chunk, jobs))
    marker.touch()
    return root


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(
    name: str, result: dict[str, Any], rows: list[dict[str, Any]], columns: list[str], out: str | None
) -> None:
    """Print a table of ``rows`` and the whole ``result`` as one JSON line; write it to ``out``."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print(
        f"\n{name}  ({result['machine'].get('gpu') or result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores, flags {' '.join(result['machine'].get('cpu_flags', []))}, "
        f"load {result['machine']['load_avg_1m']}; on a shared machine times are upper bounds)"
    )
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))
    text = json.dumps(result)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"
    return "" if v is None else str(v)
