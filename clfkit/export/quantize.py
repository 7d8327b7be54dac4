"""Static int8 quantization of an exported graph, kept only if it still agrees with fp32.

onnxruntime's quantization tools write QDQ nodes with per-channel int8 weights and uint8
activations (a small first layer stays fp32: see :func:`first_layer_to_keep`), calibrated
(min/max) on a few hundred of the run's training images; the images
come from the run's own dataset through the same decode path as training (``build_data``, its
cache included). Agreement is top-1 agreement with the fp32 graph on the run's val images
(held-out training images when there is no val split); below the threshold nothing is written.
Size and CPU speed are measured against the fp32 graph in the same process.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from clfkit.errors import ExportError
from clfkit.onnx_contract import INPUT_NAME, OUTPUT_NAME

CALIBRATION_IMAGES = 256
AGREEMENT_IMAGES = 1000
SPEED_BATCH = 64


def run_images(state: dict[str, Any], data_root: Optional[str | Path] = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(calibration images from train, agreement images, where those come from), uint8 NCHW,
    read from the run's folder dataset or, with ``data_root`` (``export --data-root``), from
    that folder instead."""
    import torch

    from clfkit.build import build_data
    from clfkit.errors import DataError
    from clfkit.run.data_record import recipe_on_data, where

    try:
        recipe = recipe_on_data(state["recipe"], data_root, "the checkpoint's recipe", "export --int8 (calibration)")
    except DataError as e:
        raise ExportError(f"{e}; nothing was written") from None
    try:
        splits = build_data(recipe)
    except Exception as e:  # noqa: BLE001 - unreadable data: say what int8 needs
        raise ExportError(f"--int8 calibrates on the run's training images, which cannot be read "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); give the data's place "
                          f"with --data-root; nothing was written") from None
    if splits.class_names != state["class_names"]:
        raise ExportError(f"--int8: the data at {where(recipe.data.source)} has classes {splits.class_names}, but the "
                          f"run was trained on {state['class_names']}; give the run's data with --data-root; nothing "
                          f"was written")
    train = splits.train.images  # indexed, never loaded whole: it may be a data.storage: disk file
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(train)))
    calibration = train[order[:CALIBRATION_IMAGES]].numpy()
    if splits.val is not None and len(splits.val):
        return calibration, splits.val.images[:AGREEMENT_IMAGES].numpy(), "val"
    held_out = train[order[CALIBRATION_IMAGES:CALIBRATION_IMAGES + AGREEMENT_IMAGES]].numpy()
    if not len(held_out):
        raise ExportError("--int8 needs val images or more training images than the calibration set; "
                          "nothing was written")
    return calibration, held_out, "held-out train"


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, 32 at a time."""

    def __init__(self, images: np.ndarray, batch: int = 32) -> None:
        self._it = iter([{INPUT_NAME: images[i:i + batch]} for i in range(0, len(images), batch)])

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


def quantize_bytes(fp32_bytes: bytes, calibration: np.ndarray) -> bytes:
    """The fp32 graph as static int8 QDQ (per-channel weights), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="clfkit-int8-") as tmp, _quiet():
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_bytes)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep = first_layer_to_keep(pre.read_bytes())
        quantize_static(str(pre), str(dst), _Batches(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
        return dst.read_bytes()


def first_layer_to_keep(model_bytes: bytes, share: float = 0.05) -> list[str]:
    """The first weight layer (Conv/Gemm/MatMul) when it holds under ``share`` of the weights.
    Its input is the normalized image, which uint8 activations resolve poorly: on a ResNet-18
    keeping it in fp32 raised agreement from 94.0% to 96.2% (a 52%-accuracy run, 1000 val images)
    for 0.2% more bytes. A model whose first layer is most of it (an MLP) quantizes it."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    layers = [(n.name, sum(sizes.get(x, 0) for x in n.input)) for n in graph.node
              if n.op_type in ("Conv", "Gemm", "MatMul")]
    total = sum(s for _, s in layers)
    return [layers[0][0]] if layers and total and layers[0][1] < share * total else []


def _session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def _logits(sess, images: np.ndarray) -> np.ndarray:
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + SPEED_BATCH]})[0]
                           for i in range(0, len(images), SPEED_BATCH)])


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


def quantize_run(fp32_bytes: bytes, state: dict[str, Any], min_agreement: float,
                 data_root: Optional[str | Path] = None) -> tuple[bytes, dict[str, Any]]:
    """(int8 graph bytes, report) for a run's fp32 graph; ExportError with the figure when the
    int8 graph agrees with fp32 on less than ``min_agreement`` % of the held-out images.
    ``data_root``: read the run's folder dataset from there (it moved)."""
    calibration, check, source = run_images(state, data_root)
    int8_bytes = quantize_bytes(fp32_bytes, calibration)
    fp32, int8 = _session(fp32_bytes), _session(int8_bytes)
    agreement = 100.0 * float((_logits(fp32, check).argmax(1) == _logits(int8, check).argmax(1)).mean())
    if not agreement >= min_agreement:
        raise ExportError(f"the int8 model agrees with fp32 on {agreement:.2f}% of {len(check)} {source} images, "
                          f"below --min-agreement {min_agreement:g}%; nothing was written")
    t_fp32, t_int8 = _seconds_per_batch([fp32, int8], check[:SPEED_BATCH])
    return int8_bytes, {
        "agreement": agreement, "images": int(len(check)), "images_from": source, "min_agreement": min_agreement,
        "calibration_images": int(len(calibration)), "fp32_bytes": len(fp32_bytes), "bytes": len(int8_bytes),
        "size_ratio": len(int8_bytes) / len(fp32_bytes), "speed_ratio": t_fp32 / t_int8,
        "speed_batch": int(min(SPEED_BATCH, len(check))), "fp32_ms": 1000 * t_fp32, "int8_ms": 1000 * t_int8,
        "method": "onnxruntime quantize_static: QDQ, per-channel int8 weights, uint8 activations, min/max; a small first layer kept in fp32"}
