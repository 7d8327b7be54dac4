"""The one device check of issue 15: training throughput against the model-only limit, and
the 100k x 64 px x 25-epoch study extrapolated from a timed 2-epoch run, as one JSON.

Last, the ``prep`` row (bench/prep_bench.py): batch preparation alone per step (flip + pad-crop,
and with cutout and mixup_cutmix), eager against compiled, with kernels per step and a
bit-for-bit check of the compiled graph against eager.

Cases: ResNet-18 with the CIFAR stem and the ImageNet stem, at 32 and 64 px, bf16,
channels_last, eager and compiled. For each case clfkit trains the recipe (epochs after the
first are averaged) and then the model alone (cast, forward, backward, step on on-device
uint8 batches, >= 200 timed steps) runs in the same process with the same settings; the ratio
is the figure (target >= 0.95). ``torch._dynamo.reset()`` runs before every case so a compiled
64 px case never reuses (or turns dynamic) the 32 px graphs.

    bash bench/gpu.sh                              # on the device; JSON under $OUT
    python bench/gpu_bench.py --smoke --out x.json # on a CPU: tiny sizes, same JSON keys
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_folder  # noqa: E402
from prep_bench import options as prep_options, prep_rows  # noqa: E402
from train_bench import run_one  # noqa: E402

PREP_START_BY_S = 330  # gpu.sh kills this script at 450 s: start the prep row (~1 min) only before this

FULL = dict(images=20_000, sizes=(32, 64), stems=("cifar", "imagenet"), compile=(False, True),
            epochs=3, batch_size=256, width=1.0, model_steps=200, warmup_steps=20,
            study_images=100_000, study_classes=100, study_size=64, study_epochs=2, study_target_epochs=25)
SMOKE = dict(images=64, sizes=(16,), stems=("cifar", "imagenet"), compile=(False,),
             epochs=2, batch_size=16, width=0.0625, model_steps=3, warmup_steps=1,
             study_images=64, study_classes=4, study_size=16, study_epochs=2, study_target_epochs=25)


def settings(smoke: bool, device: str) -> SimpleNamespace:
    """The run's sizes; ``smoke``: a CPU check of the script itself (minutes -> seconds)."""
    s = SimpleNamespace(**(SMOKE if smoke else FULL))
    s.device, s.val_fraction, s.smoke = device, 0.02, smoke
    return s


def case(work: Path, size: int, stem: str, compile_: bool, s: SimpleNamespace) -> dict:
    """One case: the trainer's epoch rate and the model-only rate, same process and settings."""
    import torch

    torch._dynamo.reset()  # fresh graphs per shape: no dynamic-shape recompile of the 32 px graph
    root = make_folder(work / f"data{size}", s.images, size)
    row = run_one(root, size, stem, compile_, s, 10, work / "runs")
    return {"model": "resnet18", "stem": stem, "size": size, "compile": compile_,
            "precision": row["precision"], "channels_last": row["device"].startswith("cuda"),
            "images_per_s": row["pipeline_images_per_s"],
            "model_only_images_per_s": row["model_only_images_per_s"], "ratio": row["ratio"],
            "first_epoch_images_per_s": row["first_epoch_images_per_s"],
            "compile_seconds": row["compile_seconds"], "model_only_steps": s.model_steps}


def study(work: Path, s: SimpleNamespace) -> dict:
    """The 100-class 64 px study timed over ``study_epochs`` epochs (evaluation included) and
    extrapolated to ``study_target_epochs``: the fixed part (decode, first-epoch warm-up) once,
    the last epoch's seconds for each further epoch."""
    import torch

    from clfkit.recipe import validate_recipe
    from clfkit.run.reader import read_history
    from clfkit.trainer import train

    torch._dynamo.reset()
    root = make_folder(work / "study", s.study_images, s.study_size, classes=s.study_classes)
    compile_ = s.compile[-1]
    r = validate_recipe({
        "name": "study", "data": {"source": {"name": "folder", "root": str(root)}, "image_size": s.study_size,
                                  "val_fraction": 0.1, "normalize": "imagenet",
                                  "augment": [{"name": "HorizontalFlip"}, {"name": "PadCrop", "padding": s.study_size // 8}]},
        "model": {"name": "resnet", "depth": 18, "stem": "cifar", "width": s.width},
        "optim": {"name": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": s.study_epochs, "batch_size": s.batch_size, "compile": compile_, "device": s.device}})
    t0 = time.perf_counter()
    res = train(r, work / "runs", quiet=True)
    wall = time.perf_counter() - t0
    rows = read_history(res.run_dir)  # the one metrics.jsonl reader (skips and warns about a bad line)
    epoch_s = rows[-1]["seconds"]
    extrapolated = wall + (s.study_target_epochs - len(rows)) * epoch_s
    return {"images": s.study_images, "size": s.study_size, "classes": s.study_classes, "stem": "cifar", "compile": compile_,
            "timed_epochs": len(rows), "timed_wall_seconds": wall, "epoch_seconds": epoch_s,
            "data_seconds": res.summary["data_seconds"], "target_epochs": s.study_target_epochs,
            "extrapolated_wall_seconds": extrapolated, "target_seconds": 240,
            "meets_target": extrapolated < 240}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script on a CPU")
    ap.add_argument("--out", default=None, help="the JSON file [$OUT/gpu_bench.json]")
    ap.add_argument("--work", default=None, help="datasets, cache and runs [a temp folder]")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-study", action="store_true")
    ap.add_argument("--no-prep", action="store_true", help="skip the batch-preparation row")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="skip the study when the cases took longer than this [300]")
    a = ap.parse_args(argv)

    import torch

    s = settings(a.smoke, a.device)
    if a.smoke:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CPU
    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-gpu-bench-"))
    os.environ["CLFKIT_CACHE_DIR"] = str(work / "cache")
    os.environ.setdefault("CLFKIT_CACHE", "1")
    out = Path(a.out or Path(os.environ.get("OUT", "bench/results")) / "gpu_bench.json")
    result = {"bench": "gpu", "date": time.strftime("%Y-%m-%d", time.gmtime()), "smoke": a.smoke,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "machine": machine(), "target_ratio": 0.95, "cases": []}
    t0 = time.perf_counter()
    for size in s.sizes:
        for stem in s.stems:
            for compile_ in s.compile:
                result["cases"].append(case(work, size, stem, compile_, s))
                print(json.dumps(result["cases"][-1]), flush=True)
                _write(out, result)  # a partial JSON survives a timeout
    result["all_cases_meet_target"] = all(c["ratio"] >= 0.95 for c in result["cases"])
    spent = time.perf_counter() - t0
    if a.no_study or spent > a.budget_s:
        result["study"] = {"skipped": f"{spent:.0f} s spent on the cases (budget {a.budget_s:.0f} s)"}
    else:
        result["study"] = study(work, s)
        print(json.dumps(result["study"]), flush=True)
    _write(out, result)
    result["prep"] = prep_row(a, s, time.perf_counter() - t0)
    _write(out, result)
    return result


def prep_row(a, s: SimpleNamespace, spent: float) -> dict:
    """Batch preparation alone, eager and compiled (smoke: eager only, tiny), on the cases' device."""
    import torch

    if a.no_prep or spent > PREP_START_BY_S:
        return {"skipped": "--no-prep" if a.no_prep else f"{spent:.0f} s spent before it"}
    device = torch.device(a.device if a.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    p = prep_options([], batch_size=s.batch_size, size=s.sizes[0], steps=3 if s.smoke else 200,
                     warmup=2 if s.smoke else 10, no_compile=s.smoke)
    return {"rows": prep_rows(p, device)}


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
