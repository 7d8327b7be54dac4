"""int8 against fp32 on this CPU: onnxruntime's quantization options, per model kind clfkit ships.

For each model (mlp, cnn, resnet18 half width with the ImageNet stem, as resnet18_small) and
image size (32, 64 px) it trains the model briefly on clfkit's procedural shapes (so its
logits are decisive, as a trained model's are), exports it with clfkit's exporter, then
quantizes it each way in CONFIGS through onnxruntime.quantization's public API
(quantize_static with a CalibrationDataReader over 256 training images; quantize_dynamic for
the mlp) and reports, per configuration and graph optimization level:

- agreement: top-1 agreement with the fp32 graph on 512 held-out images (clfkit's
  --min-agreement default is 99%);
- speed ratio fp32 time / int8 time at batch 64 and at batch 1: the median over rounds, each
  round timing every session once in turn (A, B, C, A, B, C, ...), so load that comes and goes
  hits all of them alike. Absolute times on a shared machine are not comparable across runs.

    python bench/int8_bench.py --out bench/results/int8.json
    python bench/int8_bench.py --kinds cnn --sizes 32 --rounds 3        # a quick look
    python bench/int8_bench.py --kinds cnn,resnet --sizes 64 --rounds 5 \
        --configs "qop u8s8 pt,qdq u8s8 pt,qop u8s8 pc,qdq u8s8 pc,qdq u8s8 pc first,qdq u8s8 pc first_last" \
        --out bench/results/int8_64px.json

bench/results/int8.json (every configuration) was taken with onnxruntime's threads spinning
after each run (its default), which lets one session's idle threads take CPU from the next
one timed: its batch-1 column and the mlp rows are not usable; int8_64px.json was taken with
spinning off.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, report  # noqa: E402

from clfkit.deploy.export.quantize import Int8Config, cpu_int8_support  # noqa: E402

CONFIGS = {
    "qdq u8s8 pc first": Int8Config("qdq", "u8", "s8", True, False, "first"),
    "qdq u8s8 pc": Int8Config("qdq", "u8", "s8", True, False, "none"),
    "qdq s8s8 pc": Int8Config("qdq", "s8", "s8", True, False, "none"),
    "qdq u8s8 pt": Int8Config("qdq", "u8", "s8", False, False, "none"),
    "qdq u8s8 pc rr": Int8Config("qdq", "u8", "s8", True, True, "none"),
    "qdq u8s8 pc first_last": Int8Config("qdq", "u8", "s8", True, False, "first_last"),
    "qdq u8s8 pc conv/matmul": Int8Config("qdq", "u8", "s8", True, False, "none", ("Conv", "MatMul", "Gemm")),
    "qop u8s8 pc": Int8Config("qoperator", "u8", "s8", True, False, "none"),
    "qop s8s8 pc": Int8Config("qoperator", "s8", "s8", True, False, "none"),
    "qop u8s8 pt": Int8Config("qoperator", "u8", "s8", False, False, "none"),
    "qop u8s8 pc first": Int8Config("qoperator", "u8", "s8", True, False, "first"),
}
# (configuration, level) pairs timed besides every configuration at "all"
EXTRA_LEVELS = [("qdq u8s8 pc", "basic"), ("qdq u8s8 pc", "extended"), ("qop u8s8 pc", "basic")]
MODELS = {
    "mlp": {"name": "mlp", "hidden": [1024]},
    "cnn": {"name": "cnn"},
    "resnet": {"name": "resnet", "depth": 18, "stem": "imagenet", "width": 0.5},
}


def trained_model(kind: str, size: int, steps: int):
    """(clfkit ImageClassifier trained ``steps`` SGD steps, train images, held-out images)."""
    import numpy as np
    import torch

    from clfkit.train.build import build_model
    from clfkit.data import synthetic
    from clfkit.recipe import validate_recipe

    recipe = validate_recipe(
        {
            "name": "int8-bench",
            "data": {"source": {"name": "shapes"}, "image_size": size},
            "model": MODELS[kind],
            "train": {"epochs": 1, "batch_size": 64},
        }
    )
    x, y = synthetic.generate(steps * 64 + 256, size, 10, 0, 0)
    held, _ = synthetic.generate(512, size, 10, 0, 1)
    x, held = x.transpose(0, 3, 1, 2).copy(), held.transpose(0, 3, 1, 2).copy()
    model = build_model(recipe, 10, 3, (size, size), [0.5] * 3, [0.25] * 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(steps):
        xb, yb = torch.from_numpy(x[i * 64 : (i + 1) * 64]), torch.from_numpy(y[i * 64 : (i + 1) * 64])
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), np.ascontiguousarray(x[-256:]), held


def session(model_bytes: bytes, level: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # threads that spin after a run would take the CPU from the next session timed (and
    # clfkit predict turns spinning off too)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def dynamic_bytes(fp32_bytes: bytes) -> bytes:
    """quantize_dynamic (weights int8, activations quantized at run time): for MatMul-heavy models."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "a.onnx"), Path(tmp, "b.onnx"), Path(tmp, "c.onnx")
        src.write_bytes(fp32_bytes)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()


def agreement(ref, sess, images) -> float:
    import numpy as np

    got = np.concatenate(
        [sess.run(None, {"image": images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    )
    return 100.0 * float((ref.argmax(1) == got.argmax(1)).mean())


def interleaved_ratios(sessions: dict, images, rounds: int, batch1_runs: int) -> dict[str, dict[str, float]]:
    """{name: {"b64": median ratio, "b1": median ratio}} of fp32 time / that session's time."""
    b64, b1 = images[:64], images[:1]
    times = {k: {"b64": [], "b1": []} for k in sessions}
    for s in sessions.values():  # warm up: the first runs allocate
        s.run(None, {"image": b64})
        s.run(None, {"image": b1})
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"image": b64})
            t1 = time.perf_counter()
            for _ in range(batch1_runs):
                s.run(None, {"image": b1})
            t2 = time.perf_counter()
            times[k]["b64"].append(t1 - t0)
            times[k]["b1"].append((t2 - t1) / batch1_runs)
    ref = times["fp32"]
    return {
        k: {b: median([r / t for r, t in zip(ref[b], v[b])]) for b in ("b64", "b1")}
        | {"fp32_ms_b64": 1000 * median(ref["b64"]), "ms_b64": 1000 * median(v["b64"])}
        for k, v in times.items()
    }


def bench_model(kind: str, size: int, a) -> list[dict]:
    import torch

    from clfkit.deploy.export.graph import to_onnx_bytes
    from clfkit.deploy.export.quantize import quantize_bytes

    torch.manual_seed(0)
    model, calibration, held = trained_model(kind, size, a.train_steps)
    fp32_bytes, _ = to_onnx_bytes(model, torch.from_numpy(held[:2]))
    graphs = {"fp32": fp32_bytes}
    for name, cfg in CONFIGS.items():
        if not a.configs or name in a.configs:
            graphs[name] = quantize_bytes(fp32_bytes, calibration, cfg)
    if kind == "mlp":
        graphs["dynamic s8"] = dynamic_bytes(fp32_bytes)
    sessions = {(k, "all"): session(b, "all") for k, b in graphs.items()}
    sessions.update(
        {(k, lvl): session(graphs[k], lvl) for k, lvl in EXTRA_LEVELS if k in graphs and not a.configs}
    )
    ref = sessions[("fp32", "all")].run(None, {"image": held})[0]
    named = {("fp32" if k == ("fp32", "all") else f"{k[0]} @{k[1]}"): s for k, s in sessions.items()}
    ratios = interleaved_ratios(named, held, a.rounds, a.batch1_runs)
    rows = []
    for (k, lvl), s in sessions.items():
        if k == "fp32":
            continue
        r = ratios[f"{k} @{lvl}"]
        rows.append(
            {
                "model": kind,
                "px": size,
                "config": k,
                "level": lvl,
                "agreement": agreement(ref, s, held),
                "size": len(graphs[k]) / len(fp32_bytes),
                "x_b64": r["b64"],
                "x_b1": r["b1"],
                "fp32_ms_b64": r["fp32_ms_b64"],
                "int8_ms_b64": r["ms_b64"],
                "load_1m": os.getloadavg()[0],
                "spinning": False,
                **({"settings": asdict(CONFIGS[k])} if k in CONFIGS else {}),
            }
        )
    print(f"{kind} {size}px done (load {os.getloadavg()[0]:.1f})", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="mlp,cnn,resnet")
    p.add_argument("--sizes", default="32,64")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch1-runs", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=40)
    p.add_argument(
        "--configs",
        default="",
        help="comma-separated names of CONFIGS to run (default all, and the extra optimization levels)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args()
    a.configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    rows = [
        r
        for kind in a.kinds.split(",")
        for size in map(int, a.sizes.split(","))
        for r in bench_model(kind, size, a)
    ]
    info = machine() | {"cpu_int8": cpu_int8_support()}
    result = {
        "bench": "int8",
        "machine": info,
        "rounds": a.rounds,
        "rows": rows,
        "note": "speed ratio = fp32 time / int8 time, median over interleaved rounds; "
        "agreement = top-1 agreement with fp32 on 512 held-out images, %",
    }
    report(
        "int8 vs fp32 (onnxruntime CPU)",
        result,
        rows,
        ["model", "px", "config", "level", "agreement", "size", "x_b64", "x_b1", "fp32_ms_b64", "load_1m"],
        a.out,
    )


if __name__ == "__main__":
    main()
