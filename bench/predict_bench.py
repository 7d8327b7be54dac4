"""Predict throughput on the CPU: clfkit's end-to-end ``predict_folder`` (decode + preprocess +
inference + write test.txt) against onnxruntime alone on pre-decoded tensors, and against
torch eager, for the same model, input size and batch size. Rounds interleave the three so
that a change in machine load hits them alike; the medians give the ratios.

    python bench/predict_bench.py                       # ResNet-18, 64x64, batch 256, 4096 images
    python bench/predict_bench.py --images 1024 --rounds 2 --out bench/results/predict.json

Targets: end-to-end >= 0.80 x the slower of onnxruntime alone (pre-decoded tensors) and the
decode alone (PIL in threads), per round (issue 27); >= 1.3 x torch eager (issue 6).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

from common import machine, make_folder, median, report, timed  # noqa: E402


def make_model(work: Path, size: int, depth: int, stem: str, width: float, classes: int) -> Path:
    """An (untrained) clfkit ResNet exported to ONNX through the real export path, parity checked."""
    from clfkit.train.build import build_model
    from clfkit.run.checkpoint import save_checkpoint
    from clfkit.deploy.export import export_run
    from clfkit.recipe import validate_recipe

    recipe = validate_recipe(
        {
            "name": "bench",
            "data": {"image_size": size, "normalize": "imagenet"},
            "model": {"name": "resnet", "depth": depth, "stem": stem, "width": width},
        }
    )
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = build_model(recipe, classes, 3, (size, size), mean, std).eval()
    run = work / "run"
    run.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        run / "best.pt",
        {
            "recipe": recipe.to_dict(),
            "class_names": [f"c{i}" for i in range(classes)],
            "input": {
                "image_size": [size, size],
                "channels": 3,
                "mean": mean,
                "std": std,
                "resize": "squash",
            },
            "model": model.state_dict(),
            "epoch": 0,
        },
    )
    import yaml

    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict()))  # what makes it a run folder
    samples = np.random.default_rng(0).integers(0, 256, (8, 3, size, size), dtype=np.uint8)
    np.save(run / "samples.npy", samples, allow_pickle=False)
    out = work / "model.onnx"
    export_run(run, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--depth", type=int, default=18)
    ap.add_argument("--stem", default="imagenet", choices=["imagenet", "cifar", "small"])
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads [all cores]")
    ap.add_argument("--work", default=None, help="folder for images and model [a temp folder]")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()

    import torch

    from clfkit.data import image_files
    from clfkit.deploy.batch_predict import predict_folder
    from clfkit.deploy.predictor import load_onnx
    from clfkit.run.checkpoint import load_checkpoint, model_from_checkpoint

    threads = a.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    work = Path(a.work or tempfile.mkdtemp(prefix="clfkit-bench-predict-"))
    images_dir = make_folder(work / "images", a.images, a.size, a.classes, layout="flat")
    onnx_path = make_model(work, a.size, a.depth, a.stem, a.width, a.classes)

    files, _ = image_files.list_images(images_dir)
    pre = np.stack([image_files.decode(p, (a.size, a.size), 3) for p in files]).transpose(0, 3, 1, 2).copy()
    clf = load_onnx(onnx_path, threads)
    tmodel = model_from_checkpoint(load_checkpoint(work / "run" / "best.pt")).float().eval()
    b = a.batch_size
    n = len(pre)

    def ort_alone():
        for i in range(0, n, b):
            clf(pre[i : i + b])

    def torch_eager():
        with torch.inference_mode():
            for i in range(0, n, b):
                tmodel(torch.from_numpy(pre[i : i + b]))

    def end_to_end():
        predict_folder(onnx_path, images_dir, work / "test.txt", batch_size=b, threads=threads)

    def decode_only():
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda p: image_files.decode(p, (a.size, a.size), 3), files))

    clf(pre[:b])  # warm up: onnxruntime's first run allocates its arena
    with torch.inference_mode():
        tmodel(torch.from_numpy(pre[:b]))
    modes = {
        "end_to_end": end_to_end,
        "onnxruntime_alone": ort_alone,
        "torch_eager": torch_eager,
        "decode_only": decode_only,
    }
    times: dict[str, list[float]] = {k: [] for k in modes}
    loads: list[float] = []
    for r in range(a.rounds):  # interleaved: every mode once per round, in the same order
        loads.append(os.getloadavg()[0])
        for k, fn in modes.items():
            times[k].append(timed(fn))
            print(
                f"round {r + 1}/{a.rounds} {k}: {n / times[k][-1]:.0f} images/s", file=sys.stderr, flush=True
            )
    ips = {k: n / median(v) for k, v in times.items()}
    # the limit of each round: the slower of its two halves done alone (decode, inference)
    per_round = [
        max(times["onnxruntime_alone"][r], times["decode_only"][r]) / times["end_to_end"][r]
        for r in range(a.rounds)
    ]
    ratios = {
        "end_to_end / min(onnxruntime_alone, decode_only)": median(per_round),
        "end_to_end / onnxruntime_alone": ips["end_to_end"] / ips["onnxruntime_alone"],
        "end_to_end / torch_eager": ips["end_to_end"] / ips["torch_eager"],
        "onnxruntime_alone / torch_eager": ips["onnxruntime_alone"] / ips["torch_eager"],
    }
    targets = {"end_to_end / min(onnxruntime_alone, decode_only)": 0.80, "end_to_end / torch_eager": 1.3}
    result = {
        "bench": "predict",
        "machine": machine(),
        "settings": {
            "images": n,
            "size": a.size,
            "batch_size": b,
            "model": f"resnet{a.depth}",
            "stem": a.stem,
            "width": a.width,
            "threads": threads,
            "rounds": a.rounds,
        },
        "images_per_s": ips,
        "all_images_per_s": {k: [n / t for t in v] for k, v in times.items()},
        "ratio_to_limit_per_round": per_round,
        "load_avg_1m_per_round": loads,
        "ratios": ratios,
        "targets": targets,
        "met": {k: ratios[k] >= v for k, v in targets.items()},
        "note": "shared 2-core VM: absolute images/s are upper bounds on time; the ratio to the limit is taken "
        "per round (modes run back to back) and its median is given",
    }
    rows = [{"measure": k, "images/s (median)": v} for k, v in ips.items()]
    rows += [{"measure": k, "ratio": v, "target": targets.get(k)} for k, v in ratios.items()]
    report("predict throughput", result, rows, ["measure", "images/s (median)", "ratio", "target"], a.out)


if __name__ == "__main__":
    main()
