"""From a torch model to checked ONNX bytes, and the parity figures between the two.

The exporter is torch's recommended one, ``torch.onnx.export(..., dynamo=True)`` (the
TorchScript-based ``dynamo=False`` path is deprecated): it keeps the uint8 input, a dynamic batch
dimension and parity with every built-in model. If it fails on a model (a plugin's, say) or
onnxscript is missing, the TorchScript exporter is used instead and the metadata says so; the
parity check that follows guards either result.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch

from clfkit.errors import ExportError
from clfkit.deploy.onnx_contract import INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 18  # the dynamo exporter's lowest; onnxruntime >= 1.14 runs it


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; clfkit's own report says what matters."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        yield


def _dynamo_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
        optimize=True,
    )
    return program.model_proto.SerializeToString()


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buf,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return buf.getvalue()


def to_onnx_bytes(
    model: torch.nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET
) -> tuple[bytes, str]:
    """(ONNX bytes, the exporter used: "dynamo" or "torchscript (...why)"); only dim 0 of the
    input and output is dynamic. The result passes :func:`check_onnx`."""
    with _quiet():
        try:
            data, exporter = _dynamo_bytes(model, example, opset), "dynamo"
        except Exception as e:  # noqa: BLE001 - any exporter failure: fall back, parity still decides
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
            data, exporter = _torchscript_bytes(model, example, opset), f"torchscript (dynamo failed: {why})"
    check_onnx(data)
    return data, exporter


def check_onnx(model_bytes: bytes) -> None:
    """``onnx.checker.check_model(full_check=True)``: the graph, its types and shapes are valid."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(
            f"the exported graph fails onnx.checker ({str(e).splitlines()[0][:200]}); nothing was written"
        ) from None


def run_onnx(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    """Logits of ``images`` (uint8 NCHW) from onnxruntime on the CPU."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def torch_reference(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Logits of ``images`` (uint8 NCHW) from the torch model."""
    with torch.inference_mode():
        return model(torch.from_numpy(images)).float().numpy()


def parity(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max abs difference, top-1 agreement) between two logit arrays."""
    return float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean())
