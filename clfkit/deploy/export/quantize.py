"""Static int8 quantization of an exported graph, kept only if it still agrees with fp32.

onnxruntime's quantize_static writes the graph with int8 weights and uint8 activations,
calibrated (min/max) on a few hundred of the run's training images, in each way of
:data:`CONFIGS` in turn (fastest first: per-tensor QOperator; then per-channel QDQ with a small
first layer in fp32, see :func:`first_layer_to_keep`; then the last layer in fp32 too) until
one agrees; the images
come from the run's own dataset through the same decode path as training (``build_data``, its
cache included). Agreement is top-1 agreement with the fp32 graph on the run's val images
(held-out training images when there is no val split); when no configuration reaches the
threshold nothing is written.
Size and CPU speed are measured against the fp32 graph in the same process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from clfkit.errors import ExportError
from clfkit.deploy.onnx_contract import INPUT_NAME, OUTPUT_NAME

CALIBRATION_IMAGES = 256
AGREEMENT_IMAGES = 1000
SPEED_BATCH = 64


def run_images(
    state: dict[str, Any], data_root: Optional[str | Path] = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration images from train, agreement images, where those come from), uint8 NCHW,
    read from the run's folder dataset or, with ``data_root`` (``export --data-root``), from
    that folder instead."""
    import torch

    from clfkit.deploy.export.run_data import read_run_splits

    splits = read_run_splits(state, data_root, "--int8", "calibrates on the run's training images")
    train = splits.train.images  # indexed, never loaded whole: it may be a data.storage: disk file
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(train)))
    calibration = train[order[:CALIBRATION_IMAGES]].numpy()
    if splits.val is not None and len(splits.val):
        return calibration, splits.val.images[:AGREEMENT_IMAGES].numpy(), "val"
    held_out = train[order[CALIBRATION_IMAGES : CALIBRATION_IMAGES + AGREEMENT_IMAGES]].numpy()
    if not len(held_out):
        raise ExportError(
            "--int8 needs val images or more training images than the calibration set; nothing was written"
        )
    return calibration, held_out, "held-out train"


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, 32 at a time."""

    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self._it = iter([{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self):
        return next(self._it, None)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice on the root logger and prints; clfkit reports figures."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        root.setLevel(level)


@dataclass(frozen=True)
class Int8Config:
    """One way to quantize with onnxruntime (the options int8_bench.py measures).

    ``fmt``: "qdq" (Q/DQ pairs that onnxruntime fuses into integer kernels when the session
    optimizes) or "qoperator" (QLinearConv/QLinearMatMul written directly); ``activations`` /
    ``weights``: "u8"/"s8"; ``keep``: which weight layers stay fp32 ("none", "first" when it
    is small, "first_last"); ``op_types``: the op types to quantize (None: every one onnxruntime
    can)."""

    fmt: str = "qdq"
    activations: str = "u8"
    weights: str = "s8"
    per_channel: bool = True
    reduce_range: bool = False
    keep: str = "first"
    op_types: Optional[tuple[str, ...]] = None

    def describe(self) -> str:
        kept = {
            "none": "every layer int8",
            "first": "a small first layer kept in fp32",
            "first_last": "first and last layers kept in fp32",
        }[self.keep]
        ops = f", only {'/'.join(self.op_types)}" if self.op_types else ""
        return (
            f"onnxruntime quantize_static: {self.fmt.upper()}, {self.activations.upper()}{self.weights.upper()} "
            f"(activations/weights), {'per-channel' if self.per_channel else 'per-tensor'} weights"
            f"{', reduce_range' if self.reduce_range else ''}, min/max; {kept}{ops}"
        )

    def short(self) -> str:
        return (
            f"{self.fmt} {self.activations}{self.weights} {'per-channel' if self.per_channel else 'per-tensor'}"
            f"{' reduce_range' if self.reduce_range else ''}{'' if self.keep == 'none' else ' keep ' + self.keep}"
        )


# What --int8 tries, fastest first; export keeps the first that meets --min-agreement. Measured
# by bench/int8_bench.py on a 2-core AVX-512 VNNI EPYC (docs/performance.md#int8-on-the-cpu):
# per-tensor QOperator U8S8 ran fastest on every model (batch 64: 2.6x fp32 on resnet 64 px, 1.5x
# on cnn 64 px); per-channel QDQ with the first layer in fp32 (the former default: 1.5x and
# 0.8x) agrees best on most; keeping the last layer too rescued a cnn whose large final Gemm
# lost all agreement in int8 (2% -> 100%). S8S8 activations ran 3-10x slower than U8S8 there.
CONFIGS = (
    Int8Config("qoperator", "u8", "s8", per_channel=False, keep="none"),
    Int8Config("qdq", "u8", "s8", per_channel=True, keep="first"),
    Int8Config("qdq", "u8", "s8", per_channel=True, keep="first_last"),
)
DEFAULT_CONFIG = CONFIGS[0]


def quantize_bytes(fp32_bytes: bytes, calibration: np.ndarray, config: Int8Config = DEFAULT_CONFIG) -> bytes:
    """The fp32 graph as static int8 (``config``), calibrated (min/max) on ``calibration``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="clfkit-int8-") as tmp, _quiet():
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_bytes)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ if config.fmt == "qdq" else QuantFormat.QOperator,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=types[config.weights],
            activation_type=types[config.activations],
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=layers_to_keep(pre.read_bytes(), config.keep),
            op_types_to_quantize=list(config.op_types) if config.op_types else None,
        )
        return dst.read_bytes()


def layers_to_keep(model_bytes: bytes, keep: str) -> list[str]:
    """The weight layers ``keep`` names ("none", "first", "first_last") that stay fp32."""
    if keep == "none":
        return []
    first = first_layer_to_keep(model_bytes)
    if keep == "first":
        return first
    import onnx

    layers = [
        n.name
        for n in onnx.load_from_string(model_bytes).graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
    ]
    return sorted(set(first) | set(layers[-1:]))


def first_layer_to_keep(model_bytes: bytes, share: float = 0.05) -> list[str]:
    """The first weight layer (Conv/Gemm/MatMul) when it holds under ``share`` of the weights.
    Its input is the normalized image, which uint8 activations resolve poorly: on a ResNet-18
    keeping it in fp32 raised agreement from 94.0% to 96.2% (a 52%-accuracy run, 1000 val images)
    for 0.2% more bytes. A model whose first layer is most of it (an MLP) quantizes it."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    layers = [
        (n.name, sum(sizes.get(x, 0) for x in n.input))
        for n in graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul")
    ]
    total = sum(s for _, s in layers)
    return [layers[0][0]] if layers and total and layers[0][1] < share * total else []


INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8_support(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's int8-relevant flags (as /proc/cpuinfo lists them) and whether it has an int8
    dot-product unit (VNNI or AMX), without which int8 convolutions rarely beat fp32. An
    unreadable cpuinfo (not Linux) gives ``vnni: None``."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return {"flags": [], "vnni": None}
    flags = next(
        (set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set()
    )
    have = [f for f in INT8_FLAGS if f in flags]
    return {"flags": have, "vnni": any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))}


def _session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # the speed ratio times two sessions in turn: one's threads spinning after its run would
    # take the CPU from the other's (clfkit predict runs with spinning off too)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _logits(sess, images: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            sess.run([OUTPUT_NAME], {INPUT_NAME: images[i : i + SPEED_BATCH]})[0]
            for i in range(0, len(images), SPEED_BATCH)
        ]
    )


def _seconds_per_batch(sessions: list, batch: np.ndarray, rounds: int = 7) -> list[float]:
    """Best time of one batch for each session, rounds interleaved so load hits them alike."""
    best = [float("inf")] * len(sessions)
    for s in sessions:  # warm up: the first run allocates
        s.run([OUTPUT_NAME], {INPUT_NAME: batch})
    for _ in range(rounds):
        for k, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run([OUTPUT_NAME], {INPUT_NAME: batch})
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def _agreement(fp32, int8, check: np.ndarray) -> float:
    return 100.0 * float((_logits(fp32, check).argmax(1) == _logits(int8, check).argmax(1)).mean())


def quantize_run(
    fp32_bytes: bytes, state: dict[str, Any], min_agreement: float, data_root: Optional[str | Path] = None
) -> tuple[bytes, dict[str, Any]]:
    """(int8 graph bytes, report) for a run's fp32 graph: the first of :data:`CONFIGS` (fastest
    first) whose graph agrees with fp32 on at least ``min_agreement`` % of the held-out images;
    ExportError with the figures when none does. ``data_root``: read the run's folder dataset from
    there (it moved)."""
    calibration, check, source = run_images(state, data_root)
    fp32 = _session(fp32_bytes)
    tried = []
    for config in CONFIGS:
        int8_bytes = quantize_bytes(fp32_bytes, calibration, config)
        int8 = _session(int8_bytes)
        agreement = _agreement(fp32, int8, check)
        if agreement >= min_agreement:
            break
        tried.append(f"{agreement:.2f}% ({config.short()})")
    else:
        figures = "; ".join(tried)
        raise ExportError(
            f"the int8 model agrees with fp32 on {figures} of {len(check)} {source} images, "
            f"below --min-agreement {min_agreement:g}%; nothing was written"
        )
    t_fp32, t_int8 = _seconds_per_batch([fp32, int8], check[:SPEED_BATCH])
    return int8_bytes, {
        "agreement": agreement,
        "images": int(len(check)),
        "images_from": source,
        "min_agreement": min_agreement,
        "calibration_images": int(len(calibration)),
        "fp32_bytes": len(fp32_bytes),
        "bytes": len(int8_bytes),
        "size_ratio": len(int8_bytes) / len(fp32_bytes),
        "speed_ratio": t_fp32 / t_int8,
        "speed_batch": int(min(SPEED_BATCH, len(check))),
        "fp32_ms": 1000 * t_fp32,
        "int8_ms": 1000 * t_int8,
        "method": config.describe(),
        "config": config.short(),
        "fell_back_from": tried,
        "cpu": cpu_int8_support(),
    }


def cpu_note(report: dict[str, Any]) -> str:
    """One line when this CPU has no int8 dot-product unit (VNNI/AMX), else "": int8 then runs
    near fp32 speed, or slower, whatever the configuration (docs/performance.md)."""
    cpu = report.get("cpu") or {}
    if cpu.get("vnni") is False:
        return (
            f"note: this CPU has no VNNI/AMX int8 unit (int8 flags: {', '.join(cpu['flags']) or 'none'}), so "
            f"int8 runs near fp32 speed here ({report['speed_ratio']:.2f}x); its gain is the smaller file, "
            f"and speed on a CPU with avx512_vnni, avx_vnni or amx_int8"
        )
    return ""
