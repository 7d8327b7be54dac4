"""Batch preparation alone (clfkit.train.engine.prep.BatchPrep: uint8 -> float, batched
augmentation, mixup/cutmix, channels_last) per training step, eager against compiled
(train.compile), on uint8 batches already on the device: what the step loop spends on it
outside the model. Per chain and mode: ms per step (synchronized over the timed steps),
compile seconds, CUDA kernels per step (CUDA only, from the profiler), and whether the compiled
results equal the eager ones bit for bit for the same generator states.

    python bench/prep_bench.py                      # this machine's device; a table and JSON
    python bench/prep_bench.py --batch-size 256 --size 32 --steps 200 --out x.json
gpu_bench.py runs it as its ``prep`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

# the GPU bench's recipe (gpu_bench / train_bench), then the same with cutout and mixup_cutmix
CHAINS = {
    "flip+padcrop": (["HorizontalFlip", "PadCrop"], []),
    "flip+padcrop+cutout+mixup_cutmix": (["HorizontalFlip", "PadCrop", "Cutout"], ["mixup_cutmix"]),
}


def build(chain: str, size: int, channels_last: bool, compile_: bool, backend: str, classes: int):
    from clfkit import registry
    from clfkit.train.engine.prep import BatchPrep

    augs, regs = CHAINS[chain]
    args = {"PadCrop": {"padding": max(2, size // 8)}, "Cutout": {"size": max(1, size // 4)}}
    aug = [registry.create("augmentation", n, **args.get(n, {})) for n in augs]
    return BatchPrep(
        aug,
        [registry.create("regularizer", n) for n in regs],
        classes,
        channels_last,
        compile=compile_,
        backend=backend,
    )


def _outputs(prep, x8, y, device, steps: int) -> list:
    import torch

    torch.manual_seed(0)
    gen = torch.Generator(device=device).manual_seed(0)
    return [prep(x8, y, gen) for _ in range(steps)]


def _kernels_per_step(prep, x8, y, gen) -> float | None:
    """CUDA kernels one step launches (the profiler's CUDA events over 5 steps / 5)."""
    import torch

    if x8.device.type != "cuda":
        return None
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                prep(x8, y, gen)
            torch.cuda.synchronize()
        kinds = (torch.autograd.DeviceType.CUDA,)
        return sum(1 for e in prof.events() if e.device_type in kinds) / 5
    except Exception as e:  # a profiler without CUPTI: the timing still counts
        print(f"prep bench: no kernel count ({e})", file=sys.stderr)
        return None


def time_mode(chain: str, compile_: bool, a, device) -> dict:
    """One chain in one mode: ms per step after warm-up (compilation included in warm-up)."""
    import torch

    torch._dynamo.reset()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prep = build(chain, a.size, device.type == "cuda", compile_, a.backend, a.classes)
    g = torch.Generator().manual_seed(1)
    x8 = torch.randint(0, 256, (a.batch_size, 3, a.size, a.size), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, a.classes, (a.batch_size,), generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(a.warmup):  # mixup_cutmix: both branches (both graphs) within the warm-up
        prep(x8, y, gen)
    sync()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        prep(x8, y, gen)
    sync()
    ms = (time.perf_counter() - t0) / a.steps * 1e3
    return {
        "ms_per_step": ms,
        "warmup_seconds": warm,
        "kernels_per_step": _kernels_per_step(prep, x8, y, gen),
        "outputs": _outputs(prep, x8, y, device, 6),
    }


def prep_rows(a, device) -> list[dict]:
    """Per chain: eager and (unless ``a.no_compile``) compiled, with the bit-for-bit check."""
    import torch

    rows = []
    for chain in CHAINS:
        eager = time_mode(chain, False, a, device)
        row = {
            "chain": chain,
            "batch_size": a.batch_size,
            "size": a.size,
            "steps": a.steps,
            "eager_ms_per_step": eager["ms_per_step"],
            "eager_kernels_per_step": eager["kernels_per_step"],
        }
        if not a.no_compile:
            comp = time_mode(chain, True, a, device)
            same = all(
                torch.equal(xe, xc) and torch.equal(ye, yc)
                for (xe, ye), (xc, yc) in zip(eager["outputs"], comp["outputs"])
            )
            diff = max(
                float((xe - xc).abs().max()) for (xe, _), (xc, _) in zip(eager["outputs"], comp["outputs"])
            )
            row.update(
                {
                    "backend": a.backend,
                    "compiled_ms_per_step": comp["ms_per_step"],
                    "compiled_kernels_per_step": comp["kernels_per_step"],
                    "compile_and_warmup_seconds": comp["warmup_seconds"],
                    "speedup": eager["ms_per_step"] / comp["ms_per_step"],
                    "bit_identical": same,
                    "max_abs_diff": diff,
                }
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def options(argv: list[str] | None = None, **defaults) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 256))
    ap.add_argument("--size", type=int, default=defaults.get("size", 32))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=defaults.get("steps", 200), help="timed steps [200]")
    ap.add_argument("--warmup", type=int, default=defaults.get("warmup", 10))
    ap.add_argument("--backend", default="inductor", help="torch.compile backend [inductor]")
    ap.add_argument("--no-compile", action="store_true", default=defaults.get("no_compile", False))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on a CPU [torch's default]")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = options(argv)
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    )
    result = {
        "bench": "prep",
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "machine": machine(),
        "rows": prep_rows(a, device),
    }
    result["machine_after"] = {"load_avg_1m": os.getloadavg()[0]}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
