"""ONNX export with the class names and preprocessing inside, and parity proven.

The exported graph is the trained :class:`~clfkit.build.ImageClassifier`: it takes
``image``: uint8 (batch, C, H, W) in 0..255 and returns ``logits``: float32 (batch, classes);
normalization is part of the graph. Only the batch dimension is dynamic. ``metadata_props``
carry what a predictor needs to prepare images (size, channels, resize method), the class
names, mean/std, the recipe and the parity figures.

After writing, onnxruntime and torch run the same batch of real validation images (saved by
the trainer in ``samples.npy``); the file is only put in place if top-1 agreement is 100% and
the max abs difference of logits is within tolerance.
"""
from __future__ import annotations

import io as _io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clfkit import __version__
from clfkit.checkpoint import load_checkpoint, model_from_checkpoint
from clfkit.errors import ExportError
from clfkit.io import write_bytes

INPUT_NAME, OUTPUT_NAME = "image", "logits"
META_PREFIX = "clfkit."
META_FORMAT = 1


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    agreement: float
    n_images: int


def default_output(run_dir: Path) -> Path:
    return Path("exported") / f"{run_dir.name}.onnx"


def to_onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int = 17) -> bytes:
    """Trace ``model`` to ONNX bytes; only dim 0 of input and output is dynamic."""
    buf = _io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        # The TorchScript exporter handles every built-in model, needs no onnxscript and is
        # fast; parity below is what guarantees the result either way.
        torch.onnx.export(model, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return buf.getvalue()


def run_onnx(model_bytes: bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def torch_reference(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(images)).float().numpy()


def parity(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max abs difference, top-1 agreement) between two logit arrays."""
    return float(np.abs(ref - got).max()), float((ref.argmax(1) == got.argmax(1)).mean())


def export_run(run_dir: str | Path, out: Optional[str | Path] = None, *, atol: float = 1e-3,
               opset: int = 17, checkpoint: str = "best.pt") -> ExportResult:
    """Export a run's checkpoint to ONNX, verify parity, then write ``out`` atomically."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist")
    ckpt_path = run_dir / checkpoint
    if not ckpt_path.is_file() and (run_dir / "last.pt").is_file():
        ckpt_path = run_dir / "last.pt"
    state = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(state).float().cpu().eval()
    spec = state["input"]
    h, w = spec["image_size"]
    c = spec["channels"]
    samples_path = run_dir / "samples.npy"
    if samples_path.is_file():
        images = np.load(samples_path, allow_pickle=False)
    else:  # an older run: fall back to random images of the right shape
        images = np.random.default_rng(0).integers(0, 256, (16, c, h, w), dtype=np.uint8)
    if images.shape[1:] != (c, h, w) or images.dtype != np.uint8:
        raise ExportError(f"{samples_path} holds {images.dtype} {images.shape[1:]}, the model expects uint8 {(c, h, w)}")

    model_bytes = to_onnx_bytes(model, torch.from_numpy(images[:2]), opset)
    ref = torch_reference(model, images)
    got = run_onnx(model_bytes, images)
    max_diff, agreement = parity(ref, got)
    report = f"parity on {len(images)} validation images: max abs diff {max_diff:.2e}, top-1 agreement {agreement:.2%}"
    if agreement < 1.0 or not max_diff <= atol:
        raise ExportError(f"exported model does not match the trained one ({report}; tolerance {atol:g}); "
                          f"nothing was written")

    import onnx

    proto = onnx.load_from_string(model_bytes)
    meta = {
        "format": str(META_FORMAT),
        "version": __version__,
        "class_names": json.dumps(state["class_names"]),
        "image_size": json.dumps([h, w]),
        "channels": str(c),
        "color": "RGB" if c == 3 else "L",
        "resize": spec.get("resize", "squash"),
        "mean": json.dumps(spec["mean"]),
        "std": json.dumps(spec["std"]),
        "input": "uint8 NCHW 0..255; normalization (mean/std) is inside the graph",
        "recipe": json.dumps(state["recipe"]),
        "epoch": str(state.get("epoch", "")),
        "parity": json.dumps({"max_abs_diff": max_diff, "top1_agreement": agreement, "images": len(images)}),
    }
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = META_PREFIX + k, v
    proto.producer_name, proto.producer_version = "clfkit", __version__
    proto.doc_string = f"clfkit export of {run_dir.name}: {len(state['class_names'])} classes"
    out = Path(out) if out else default_output(run_dir)
    write_bytes(out, proto.SerializeToString())
    return ExportResult(out, max_diff, agreement, len(images))
