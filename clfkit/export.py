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
from clfkit.checkpoint import model_from_checkpoint, run_checkpoint
from clfkit.errors import ExportError
from clfkit.io import write_bytes
from clfkit.onnx_contract import INPUT_NAME, META_FORMAT, META_PREFIX, OUTPUT_NAME, build_metadata, validate_metadata

__all__ = ["INPUT_NAME", "META_FORMAT", "META_PREFIX", "OUTPUT_NAME", "ExportResult", "export_run"]


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    agreement: float
    n_images: int
    checkpoint: Optional[Path] = None
    note: str = ""  # what was exported when it is not the finished run's best.pt


def default_output(run_dir: Path) -> Path:
    """exported/<run name>.onnx, the name taken from the resolved folder (``export .`` inside a
    run gives the run's name, never ".onnx")."""
    name = Path(run_dir).resolve().name.lstrip(".")
    if not name:
        raise ExportError(f"cannot name the export after {run_dir}; give -o FILE.onnx")
    return Path("exported") / f"{name}.onnx"


def _check_output(out: Path, run_dir: Path) -> None:
    """Refuse an output that would replace the run's own files (checkpoints, reports, ...)."""
    if out.is_dir():
        raise ExportError(f"-o {out} is a folder; give a file name, e.g. {out / (run_dir.resolve().name + '.onnx')}")
    # an earlier export kept in the run folder may be replaced; nothing else there may
    own = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix.lower() != ".onnx"]
    if any(_same_file(out, p) for p in own):
        raise ExportError(f"-o {out} is a file of the run folder {run_dir}; exporting there would overwrite "
                          f"it. Give a new file name, e.g. -o {default_output(run_dir)}")
    if out.exists() and out.suffix.lower() != ".onnx":  # e.g. another run's best.pt, a dataset file
        raise ExportError(f"-o {out} exists and is not an .onnx file; an export replaces only an earlier "
                          f"export. Give a new name or one ending in .onnx")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _parity_images(run_dir: Path, channels: int, h: int, w: int) -> np.ndarray:
    """The validation images the trainer saved for parity (random ones for an older run)."""
    path = run_dir / "samples.npy"
    if not path.is_file():
        return np.random.default_rng(0).integers(0, 256, (16, channels, h, w), dtype=np.uint8)
    try:
        images = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ExportError(f"{path} is not a readable array ({type(e).__name__}); delete it to check parity "
                          f"on random images instead") from None
    if not isinstance(images, np.ndarray) or images.shape[1:] != (channels, h, w) or images.dtype != np.uint8 \
            or len(images) == 0:
        shape = getattr(images, "shape", "?")
        raise ExportError(f"{path} holds {getattr(images, 'dtype', '?')} {shape}, the model expects uint8 "
                          f"(N>=1, {channels}, {h}, {w}); delete it to check parity on random images instead")
    return images


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
               opset: int = 17, checkpoint: Optional[str] = None) -> ExportResult:
    """Export a run's checkpoint (default best.pt, or last.pt of an unfinished run) to ONNX,
    verify parity, then write ``out`` atomically."""
    run_dir = Path(run_dir)
    ckpt_path, state = run_checkpoint(run_dir, checkpoint, "export")
    out = Path(out) if out else default_output(run_dir)
    _check_output(out, run_dir)
    model = model_from_checkpoint(state).float().cpu().eval()
    spec = state["input"]
    h, w = spec["image_size"]
    c = spec["channels"]
    images = _parity_images(run_dir, c, h, w)

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
    run_name = run_dir.resolve().name
    meta = build_metadata(
        state["class_names"], spec, version=__version__,
        input="uint8 NCHW 0..255; normalization (mean/std) is inside the graph",
        recipe=json.dumps(state["recipe"]), run=run_name, checkpoint=ckpt_path.name,
        epoch=str(state.get("epoch", "")),
        parity=json.dumps({"max_abs_diff": max_diff, "top1_agreement": agreement, "images": len(images)}))
    # the exporter's output passes the same check every reader applies
    graph_in = [None, c, h, w]
    validate_metadata(meta, "the export", graph_in, [None, len(state["class_names"])])
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = META_PREFIX + k, v
    proto.producer_name, proto.producer_version = "clfkit", __version__
    proto.doc_string = f"clfkit export of {run_name} ({ckpt_path.name}): {len(state['class_names'])} classes"
    write_bytes(out, proto.SerializeToString())
    note = ""
    if ckpt_path.name != "best.pt":
        unfinished = "" if (run_dir / "best.pt").is_file() else "the run has no best.pt (unfinished?); "
        note = f"{unfinished}exported {ckpt_path.name} (epoch {state.get('epoch', '?')})"
    return ExportResult(out, max_diff, agreement, len(images), ckpt_path, note)
