"""The one device check (issues 15 and 24), driven case by case by bench/gpu.sh: a lent GPU is
15 minutes in all, so nothing here may waste it.

    python bench/gpu_bench.py --preflight            # ~5 s: every import, CUDA, one step, a tiny compile
    python bench/gpu_bench.py --list-cases           # "name timeout_s" lines, in the order gpu.sh runs them
    python bench/gpu_bench.py --case NAME --rows DIR # one case; its row -> DIR/NAME.json
    python bench/gpu_bench.py --collect --rows DIR --out gpu_bench.json
    (--cpu on each: tiny sizes on the CPU, for the test of the script itself)

Cases, in order: ``study`` first (the headline: S002's shape, 100k 64 px images of 100 classes,
ResNet-18 with the CIFAR stem, 25 epochs, evaluation included, compiled; target under 240 s
on one H200; the study's timeout, 300 s, includes writing its 100k PNGs, which its wall time
does not; a study stopped by its timeout keeps the epochs it did and an extrapolation),
then the pipeline against the model-only limit (``c<size>-<stem>-<eager|compile>``: clfkit's
epoch rate, epochs after the first averaged, against cast + forward + backward + step on
on-device uint8 batches of the same model and settings, in the same process; target ratio
>= 0.95), eager cases before compiled ones (cheaper, so more rows survive a short lease),
then ``prep`` (batch preparation alone, bench/prep_bench.py) and ``decode`` (the first-decode
ratio of bench/decode_bench.py on the GPU machine's idle cores). Each case runs in its own
process under its own ``timeout -k`` (gpu.sh): a crash, a CUDA error or a hang costs that row
only. Every row records peak GPU memory (allocated and reserved, pipeline and model-only).

``GPU_BENCH_CASES="study c32-cifar-compile"`` runs a subset; ``GPU_BENCH_TIMEOUTS="study=200"``
changes a case's timeout; ``GPU_BENCH_FAIL="name name:hang"`` makes cases fail or hang at
their start (the test of the guards); ``GPU_BENCH_COMPILE_BACKEND`` is the preflight's
compile backend [inductor].
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

STUDY_TARGET_S = 240
TARGET_RATIO = 0.95
# what the bench imports, with the distribution that provides it: the preflight imports each,
# and gpu.sh installs the wheels of bench/gpu_wheels.txt (the ones the device image lacks)
IMPORTS = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "numpy": "numpy",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "typing_inspection": "typing-inspection",
    "annotated_types": "annotated-types",
    "albumentations": "albumentations",
    "albucore": "albucore",
    "cv2": "opencv-python-headless",
    "rich": "rich",
    "click": "click",
    "packaging": "packaging",
    "matplotlib": "matplotlib",
}

FULL = dict(
    images=20_000,
    epochs=3,
    batch_size=256,
    width=1.0,
    model_steps=200,
    warmup_steps=20,
    study_images=100_000,
    study_classes=100,
    study_size=64,
    study_epochs=25,
    study_compile=True,
    device="auto",
    timeouts={"study": 300, "eager": 60, "compile": 120, "prep": 90, "decode": 60},
    cases=[
        "c32-cifar-eager",
        "c32-imagenet-eager",
        "c64-cifar-eager",
        "c64-imagenet-eager",
        "c32-cifar-compile",
        "c64-cifar-compile",
        "c32-imagenet-compile",
        "c64-imagenet-compile",
    ],
)
CPU = dict(
    images=64,
    epochs=2,
    batch_size=16,
    width=0.0625,
    model_steps=3,
    warmup_steps=1,
    study_images=96,
    study_classes=4,
    study_size=16,
    study_epochs=2,
    study_compile=False,
    device="cpu",
    timeouts={"study": 120, "eager": 120, "compile": 300, "prep": 120},
    cases=["c16-cifar-eager", "c16-imagenet-eager"],
)


def settings(cpu: bool) -> SimpleNamespace:
    s = SimpleNamespace(**(CPU if cpu else FULL))
    s.cpu, s.val_fraction = cpu, 0.02
    return s


def case_list(s: SimpleNamespace) -> list[tuple[str, int]]:
    """(name, timeout in s) in the order gpu.sh runs them; GPU_BENCH_CASES picks a subset."""
    names = ["study", *s.cases] + ([] if s.cpu else ["prep", "decode"])
    limits = {
        n: s.timeouts.get(n, s.timeouts["compile" if n.endswith("compile") else "eager"]) for n in names
    }
    for item in os.environ.get("GPU_BENCH_TIMEOUTS", "").replace(",", " ").split():  # name=seconds
        name, _, seconds = item.partition("=")
        if name not in limits or not seconds.isdigit():
            raise SystemExit(
                f"GPU_BENCH_TIMEOUTS: {item!r} is not <case>=<seconds>; cases: {' '.join(names)}"
            )
        limits[name] = int(seconds)
    wanted = os.environ.get("GPU_BENCH_CASES", "").replace(",", " ").split()
    if wanted:
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise SystemExit(f"GPU_BENCH_CASES: unknown case(s) {unknown}; known: {' '.join(names)}")
        names = [n for n in names if n in wanted]
    return [(n, limits[n]) for n in names]


# ---------------------------------------------------------------- preflight
class PreflightFailed(Exception):
    pass


def preflight(s: SimpleNamespace, rows: Optional[Path]) -> dict:
    """Every import the bench needs, CUDA, one training step on the device, a tiny compile.
    Raises PreflightFailed with what failed and what to do; returns the versions and device."""
    t0 = time.perf_counter()
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        raise PreflightFailed(f"cannot import torch: {type(e).__name__}: {_first(e)}") from None
    if not s.cpu and not torch.cuda.is_available():  # first: the cheapest way to a useless run
        raise PreflightFailed(
            f"CUDA is not visible to torch {torch.__version__} (built for CUDA {torch.version.cuda}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); nothing to measure"
        )
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "versions": _imports(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "triton": _version("triton"),
    }
    device = torch.device("cpu" if s.cpu else "cuda")
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info()
        info.update(
            device=torch.cuda.get_device_name(0),
            capability=list(torch.cuda.get_device_capability(0)),
            bf16=torch.cuda.is_bf16_supported(),
            free_gb=round(free / 1e9, 1),
            total_gb=round(total / 1e9, 1),
        )
    else:
        info["device"] = "cpu"
    info["step"] = _one_step(s)
    backend = os.environ.get("GPU_BENCH_COMPILE_BACKEND", "inductor")
    try:
        f = torch.compile(lambda x: torch.relu(x) * 2 + 1, backend=backend)
        ok = torch.equal(f(torch.full((64,), -1.0, device=device)), torch.ones(64, device=device))
    except Exception as e:  # noqa: BLE001 - any compiler failure is the finding
        raise PreflightFailed(f"torch.compile ({backend}) failed: {type(e).__name__}: {_first(e)}") from None
    if not ok:
        raise PreflightFailed(f"torch.compile ({backend}) gave a wrong result")
    info.update(compile_backend=backend, seconds=round(time.perf_counter() - t0, 1))
    return info


def _imports() -> dict[str, Optional[str]]:
    import importlib

    versions, missing = {}, []
    for module, dist in IMPORTS.items():
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - ImportError, or a broken wheel's own error
            missing.append(f"{module} (distribution {dist}: {type(e).__name__}: {_first(e)})")
            continue
        versions[dist] = _version(dist) or getattr(mod, "__version__", None)
    if missing:
        raise PreflightFailed(
            f"cannot import {'; '.join(missing)}. Carry the wheels: run "
            f"../shared/gpu/fetch-wheels.sh $(grep -v '^#' bench/gpu_wheels.txt) in the project "
            f"root (add the missing distributions to bench/gpu_wheels.txt), then carry .whl"
        )
    for module in (
        "clfkit.train.trainer",
        "clfkit.run.plots",
    ):  # the training side; the figures every run draws
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001
            raise PreflightFailed(
                f"cannot import {module}: {type(e).__name__}: {_first(e)} (matplotlib and "
                f"its dependencies must import for {module.split('.')[-1]})"
            ) from None
    from clfkit import __version__

    versions["clfkit"] = __version__
    return versions


def _one_step(s: SimpleNamespace) -> str:
    """One training step of the cases' model on the cases' runtime (autocast, channels_last)."""
    import torch

    from clfkit.train.build import build_loss, build_model, build_optimizer
    from clfkit.train.engine.runtime import place_model, resolve_runtime

    try:
        recipe = _recipe(Path("/nonexistent"), 32, "cifar", False, s, epochs=1)
        rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
        model = place_model(build_model(recipe, 10, 3, (32, 32), [0.5] * 3, [0.25] * 3), rt)
        opt = build_optimizer(recipe, model, [])
        x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device=rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            loss = build_loss(recipe, 10).to(rt.device)(
                model(x), torch.zeros(8, dtype=torch.long, device=rt.device)
            )
        loss.backward()
        opt.step()
        value = float(loss.detach())
    except Exception as e:  # noqa: BLE001
        raise PreflightFailed(f"one training step failed: {type(e).__name__}: {_first(e)}") from None
    if value != value:
        raise PreflightFailed("one training step gave a NaN loss")
    return f"{rt.device} {rt.precision} channels_last={rt.channels_last} loss {value:.3f}"


def _version(dist: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _first(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


# ---------------------------------------------------------------- the cases
def _recipe(
    root: Path,
    size: int,
    stem: str,
    compile_: bool,
    s: SimpleNamespace,
    *,
    epochs: int,
    classes_folder: bool = False,
):
    from clfkit.recipe import validate_recipe

    return validate_recipe(
        {
            "name": f"bench-{size}-{stem}-{'compile' if compile_ else 'eager'}",
            "data": {
                "source": {"name": "folder", "root": str(root)},
                "image_size": size,
                "val_fraction": 0.1 if classes_folder else s.val_fraction,
                "normalize": "imagenet",
                "augment": [{"name": "HorizontalFlip"}, {"name": "PadCrop", "padding": max(2, size // 8)}],
            },
            "model": {"name": "resnet", "depth": 18, "stem": stem, "width": s.width},
            "optim": {
                "name": "sgd",
                "lr": 0.2 if classes_folder else 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 5e-4,
            },
            "schedule": {"name": "cosine"},
            # no TensorBoard event files: nothing reads them, and their writing is not what is timed
            "train": {
                "epochs": epochs,
                "batch_size": s.batch_size,
                "compile": compile_,
                "device": s.device,
                "track": [],
            },
        }
    )


def _peak_memory() -> dict[str, Optional[float]]:
    """Peak GPU memory since the last reset (GB), then reset; None on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return {"allocated_gb": None, "reserved_gb": None}
    out = {
        "allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
        "reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
    }
    torch.cuda.reset_peak_memory_stats()
    return out


def pipeline_case(name: str, s: SimpleNamespace, work: Path) -> dict:
    """clfkit's epoch rate against the model-only limit, same model and settings."""
    from common import make_folder
    from train_bench import model_only

    from clfkit.run.reader import read_history
    from clfkit.train.trainer import train

    size, stem, mode = name[1:].split("-")
    size, compile_ = int(size), mode == "compile"
    root = make_folder(work / f"data{size}", s.images, size)
    recipe = _recipe(root, size, stem, compile_, s, epochs=s.epochs)
    # no peak reset before: CUDA is not initialized yet in this process, and must not be before
    # the trainer's decode workers start
    res = train(recipe, work / "runs", quiet=True)
    rows = read_history(res.run_dir)
    later = rows[1:] or rows  # the first epoch pays for warm-up (cudnn autotune, compile)
    pipeline = sum(r["images_per_s"] for r in later) / len(later)
    mem = _peak_memory()
    limit = model_only(recipe, size, 10, s.model_steps, s.warmup_steps + (20 if compile_ else 0))
    summ = res.summary
    return {
        "case": name,
        "model": "resnet18",
        "stem": stem,
        "size": size,
        "compile": compile_,
        "precision": summ["precision"],
        "device": summ["device"],
        "train_images": summ["train_images"],
        "epochs": len(rows),
        "images_per_s": pipeline,
        "first_epoch_images_per_s": rows[0]["images_per_s"],
        "model_only_images_per_s": limit["images_per_s"],
        "ratio": pipeline / limit["images_per_s"],
        "meets_target": pipeline / limit["images_per_s"] >= TARGET_RATIO,
        "compile_seconds": summ.get("compile_seconds"),
        "data_seconds": summ["data_seconds"],
        "model_only_steps": s.model_steps,
        "peak_gpu_memory": {"pipeline": mem, "model_only": _peak_memory()},
    }


class StudyProgress:
    """A tracker (clfkit.run.tracking): after each epoch the study's row is rewritten, so a study
    stopped by its timeout still leaves the epochs it did and an extrapolation to the target."""

    def __init__(self, row: dict, path: Path, t0: float):
        self.row, self.path, self.t0 = row, path, t0

    def epoch(self, metrics: dict) -> None:
        done, wall = metrics["epoch"], time.perf_counter() - self.t0
        self.row.update(
            epochs_done=done,
            wall_seconds=round(wall, 1),
            last_epoch_seconds=metrics["seconds"],
            extrapolated_wall_seconds=round(wall + (self.row["epochs"] - done) * metrics["seconds"], 1),
            val_acc=metrics.get("val_acc"),
            peak_gpu_memory=_peak_memory_now(),
        )
        self.row["meets_target"] = self.row["extrapolated_wall_seconds"] < STUDY_TARGET_S
        _write_json(self.path, self.row)


def _peak_memory_now() -> Optional[float]:
    import torch

    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None


def study_case(s: SimpleNamespace, work: Path, row_path: Path) -> dict:
    """The headline: S002's shape trained in full, wall time from the train call (decode,
    compile and evaluation included; writing the image folder excluded)."""
    from common import make_folder

    from clfkit.train.trainer import train

    t_folder = time.perf_counter()
    root = make_folder(work / "study", s.study_images, s.study_size, classes=s.study_classes)
    recipe = _recipe(
        root, s.study_size, "cifar", s.study_compile, s, epochs=s.study_epochs, classes_folder=True
    )
    row = {
        "case": "study",
        "images": s.study_images,
        "size": s.study_size,
        "classes": s.study_classes,
        "model": "resnet18",
        "stem": "cifar",
        "compile": s.study_compile,
        "epochs": s.study_epochs,
        "batch_size": s.batch_size,
        "folder_seconds": round(time.perf_counter() - t_folder, 1),
        "target_seconds": STUDY_TARGET_S,
        "finished": False,
    }
    t0 = time.perf_counter()
    res = train(recipe, work / "runs", quiet=True, trackers=(StudyProgress(row, row_path, t0),))
    summ = res.summary
    row.update(
        finished=True,
        wall_seconds=round(time.perf_counter() - t0, 1),
        data_seconds=summ["data_seconds"],
        train_seconds=summ["train_seconds"],
        compile_seconds=summ.get("compile_seconds"),
        best_val_acc=summ["best_val_acc"],
        test_acc=summ.get("test_acc"),
        device=summ["device"],
        precision=summ["precision"],
    )
    row.update(
        extrapolated_wall_seconds=row["wall_seconds"], meets_target=row["wall_seconds"] < STUDY_TARGET_S
    )
    return row


def prep_case(s: SimpleNamespace) -> dict:
    import torch
    from prep_bench import options as prep_options
    from prep_bench import prep_rows

    device = torch.device("cuda" if torch.cuda.is_available() and not s.cpu else "cpu")
    p = prep_options(
        [],
        batch_size=s.batch_size,
        size=32,
        steps=3 if s.cpu else 200,
        warmup=2 if s.cpu else 10,
        no_compile=s.cpu,
    )
    return {"case": "prep", "rows": prep_rows(p, device)}


def decode_case(rows: Path, work: Path) -> dict:
    """The first-decode ratio of issue 15 (bench/decode_bench.py) on this idle many-core host."""
    import subprocess

    out = rows / "decode_bench.json"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("decode_bench.py")),
            "--images",
            "20000",
            "--rounds",
            "3",
            "--work",
            str(work / "decode"),
            "--out",
            str(out),
        ],
        check=True,
    )
    return {"case": "decode", **json.loads(out.read_text())}


def run_case(name: str, s: SimpleNamespace, rows: Path, work: Path) -> dict:
    injected = os.environ.get("GPU_BENCH_FAIL", "").replace(",", " ").split()
    if f"{name}:hang" in injected:  # the test of the timeout guard
        time.sleep(3600)
    if name in injected:
        raise RuntimeError(f"injected failure (GPU_BENCH_FAIL={os.environ['GPU_BENCH_FAIL']})")
    import torch

    if s.cpu:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CPU
    if name == "study":
        return study_case(s, work, rows / "study.json")
    if name == "prep":
        return prep_case(s)
    if name == "decode":
        return decode_case(rows, work)
    return pipeline_case(name, s, work)


# ---------------------------------------------------------------- collecting the rows
def collect(s: SimpleNamespace, rows: Path) -> dict:
    """gpu_bench.json from the rows directory: each case's row, or why it has none (its exit
    code and log tail as gpu.sh recorded them, or skipped for lack of time)."""
    pre = _read_json(rows / "preflight.json") or {}
    result: dict[str, Any] = {
        "bench": "gpu",
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "mode": "cpu" if s.cpu else "gpu",
        "preflight": pre,
        "target_ratio": TARGET_RATIO,
        "cases": [],
    }
    for name, limit in case_list(s):
        row = _read_json(rows / f"{name}.json") or {"case": name}
        rc_text = (rows / f"{name}.rc").read_text().strip() if (rows / f"{name}.rc").exists() else None
        if rc_text is not None and rc_text != "0":
            rc = int(rc_text)
            why = f"timed out after {limit} s" if rc in (124, 137) else f"exit code {rc}"
            row.update(failed=why, log_tail=_tail(rows / f"{name}.log"))
        elif rc_text is None:
            skip = rows / f"{name}.skip"
            row["skipped"] = skip.read_text().strip() if skip.exists() else "not run"
        if name == "study":
            result["study"] = row
        elif name in ("prep", "decode"):
            result[name] = row
        else:
            result["cases"].append(row)
    ran = [c for c in result["cases"] if "ratio" in c]
    result["all_cases_meet_target"] = (
        bool(ran) and len(ran) == len(result["cases"]) and all(c["ratio"] >= TARGET_RATIO for c in ran)
    )
    return result


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


# ---------------------------------------------------------------- command line
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--preflight", action="store_true")
    what.add_argument("--list-cases", action="store_true")
    what.add_argument("--case")
    what.add_argument("--collect", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU: the test of the script itself")
    ap.add_argument("--rows", type=Path, default=None, help="one JSON per case, the preflight's, logs")
    ap.add_argument("--work", type=Path, default=None, help="datasets, cache and runs [a temp folder]")
    ap.add_argument("--out", type=Path, default=None, help="--collect: the JSON file")
    a = ap.parse_args(argv)
    s = settings(a.cpu)
    if a.list_cases:
        print("\n".join(f"{n} {t}" for n, t in case_list(s)))
        return 0
    rows = a.rows or Path(tempfile.mkdtemp(prefix="clfkit-gpu-rows-"))
    if a.collect:
        result = collect(s, rows)
        _write_json(a.out or rows / "gpu_bench.json", result)
        return 0
    if a.preflight:
        try:
            info = preflight(s, rows)
        except PreflightFailed as e:
            _write_json(rows / "preflight.json", {"ok": False, "failed": str(e)})
            print(f"PREFLIGHT FAILED: {e}", flush=True)
            return 3
        _write_json(rows / "preflight.json", {"ok": True, **info})
        print(
            f"preflight ok in {info['seconds']} s: {info['device']}, torch {info['versions']['torch']}, "
            f"step {info['step']}, compile ({info['compile_backend']}) ok",
            flush=True,
        )
        return 0
    work = a.work or Path(tempfile.mkdtemp(prefix="clfkit-gpu-bench-"))
    os.environ["CLFKIT_CACHE_DIR"] = str(work / "cache")  # decoded once, shared by the case processes
    os.environ.setdefault("CLFKIT_CACHE", "1")
    row = run_case(a.case, s, rows, work)
    _write_json(rows / f"{a.case}.json", row)
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
