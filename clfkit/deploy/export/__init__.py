"""ONNX export with the class names and preprocessing inside, and parity proven.

The exported graph is the trained :class:`~clfkit.train.build.ImageClassifier`: it takes
``image``: uint8 (batch, C, H, W) in 0..255 and returns ``logits``: float32 (batch, classes);
normalization is part of the graph. Only the batch dimension is dynamic. ``metadata_props``
carry what a predictor needs to prepare images (size, channels, resize method), the class
names, mean/std, the recipe and the parity figures.

Before writing, the graph passes ``onnx.checker`` (full check), and onnxruntime and torch run the
same batch of real validation images (saved by the trainer in ``samples.npy``); the file is only
put in place if top-1 agreement is 100% and the max abs difference of logits is within
tolerance. ``tta="flip"`` exports the flip-averaging model of :mod:`clfkit.deploy.tta` (parity is
proven on that graph); ``int8=True`` then quantizes it (:mod:`clfkit.deploy.export.quantize`) and
writes it only if it agrees with the fp32 graph on at least ``min_agreement`` % of held-out
images.

Modules: ``graph`` (torch -> checked ONNX bytes, parity figures), ``quantize`` (int8).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from clfkit import __version__
from clfkit.run.checkpoint import model_from_checkpoint, run_checkpoint, unfinished_note
from clfkit.run.run_folder import BEST_PT
from clfkit.errors import ExportError
from clfkit.util.atomic import write_bytes
from clfkit.deploy.export.graph import DEFAULT_OPSET, parity, run_onnx, to_onnx_bytes, torch_reference
from clfkit.deploy.onnx_contract import (
    INPUT_NAME,
    META_FORMAT,
    META_PREFIX,
    OUTPUT_NAME,
    build_metadata,
    validate_metadata,
)
from clfkit.deploy.tta import TTA_MODES, with_tta

__all__ = ["INPUT_NAME", "META_FORMAT", "META_PREFIX", "OUTPUT_NAME", "ExportResult", "export_run"]


@dataclass
class ExportResult:
    path: Path
    max_abs_diff: float
    agreement: float
    n_images: int
    checkpoint: Optional[Path] = None
    note: str = ""  # what was exported when it is not the finished run's best.pt
    exporter: str = "dynamo"
    tta: str = "none"
    int8: dict = field(default_factory=dict)  # quantize.Int8Report as a dict when --int8
    calibration: dict = field(
        default_factory=dict
    )  # --calibrate: temperature, ECE before/after (export.calibrate)


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
        raise ExportError(
            f"-o {out} is a folder; give a file name, e.g. {out / (run_dir.resolve().name + '.onnx')}"
        )
    # an earlier export kept in the run folder may be replaced; nothing else there may
    own = [p for p in run_dir.rglob("*") if p.is_file() and p.suffix.lower() != ".onnx"]
    if any(_same_file(out, p) for p in own):
        raise ExportError(
            f"-o {out} is a file of the run folder {run_dir}; exporting there would overwrite "
            f"it. Give a new file name, e.g. -o {default_output(run_dir)}"
        )
    if out.exists() and out.suffix.lower() != ".onnx":  # e.g. another run's best.pt, a dataset file
        raise ExportError(
            f"-o {out} exists and is not an .onnx file; an export replaces only an earlier "
            f"export. Give a new name or one ending in .onnx"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _parity_images(run_dir: Path, channels: int, h: int, w: int) -> np.ndarray:
    """The validation images the trainer saved for parity (random ones for an older run)."""
    from clfkit.run.reader import read_samples

    images = read_samples(run_dir, (channels, h, w))
    if images is None:  # an older run
        images = np.random.default_rng(0).integers(0, 256, (16, channels, h, w), dtype=np.uint8)
    return images


def _prove_parity(
    model: torch.nn.Module, model_bytes: bytes, images: np.ndarray, atol: float
) -> tuple[float, float]:
    """(max abs diff, top-1 agreement) of the ONNX graph against torch; ExportError unless exact."""
    ref = torch_reference(model, images)
    got = run_onnx(model_bytes, images)
    max_diff, agreement = parity(ref, got)
    report = f"parity on {len(images)} validation images: max abs diff {max_diff:.2e}, top-1 agreement {agreement:.2%}"
    if agreement < 1.0 or not max_diff <= atol:
        raise ExportError(
            f"exported model does not match the trained one ({report}; tolerance {atol:g}); "
            f"nothing was written"
        )
    return max_diff, agreement


def _with_metadata(model_bytes: bytes, meta: dict[str, str], state: dict, doc: str) -> bytes:
    """The graph with clfkit's metadata, checked as every reader will check it."""
    import onnx

    spec = state["input"]
    h, w = spec["image_size"]
    validate_metadata(meta, "the export", [None, spec["channels"], h, w], [None, len(state["class_names"])])
    proto = onnx.load_from_string(model_bytes)
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = META_PREFIX + k, v
    proto.producer_name, proto.producer_version = "clfkit", __version__
    proto.doc_string = doc
    return proto.SerializeToString()


def export_run(
    run_dir: str | Path,
    out: Optional[str | Path] = None,
    *,
    atol: float = 1e-3,
    opset: int = DEFAULT_OPSET,
    checkpoint: Optional[str] = None,
    tta: str = "none",
    int8: bool = False,
    min_agreement: float = 99.0,
    calibrate: bool = False,
    data_root: Optional[str | Path] = None,
) -> ExportResult:
    """Export a run's checkpoint (default best.pt, or last.pt of an unfinished run) to ONNX,
    verify parity (and with ``int8``, agreement of the quantized graph, calibrated on the run's
    training images), then write ``out`` atomically. ``calibrate``: divide the logits by a
    temperature fitted on the run's val split (:mod:`clfkit.deploy.export.calibrate`). ``data_root``
    reads the run's folder dataset from there (it moved), for --int8 and --calibrate."""
    if tta not in TTA_MODES:
        raise ExportError(f"--tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    run_dir = Path(run_dir)
    ckpt_path, state = run_checkpoint(run_dir, checkpoint, "export")
    out = Path(out) if out else default_output(run_dir)
    _check_output(out, run_dir)
    model = with_tta(model_from_checkpoint(state).float().cpu().eval(), tta)
    calibration: dict = {}
    if calibrate:  # before the export: parity is proven on the scaled graph
        from clfkit.deploy.export.calibrate import calibrate as fit_temperature

        model, calibration = fit_temperature(model, state, data_root=data_root)
    spec = state["input"]
    images = _parity_images(run_dir, spec["channels"], *spec["image_size"])
    model_bytes, exporter = to_onnx_bytes(model, torch.from_numpy(images[:2]), opset)
    max_diff, agreement = _prove_parity(model, model_bytes, images, atol)
    int8_report: dict = {}
    if int8:
        from clfkit.deploy.export.quantize import quantize_run

        model_bytes, int8_report = quantize_run(model_bytes, state, min_agreement, data_root)
    run_name = run_dir.resolve().name
    extra = {"int8": json.dumps(int8_report)} if int8 else {}
    if calibrate:
        extra["calibration"] = json.dumps(calibration)
    meta = build_metadata(
        state["class_names"],
        spec,
        version=__version__,
        input="uint8 NCHW 0..255; normalization (mean/std) is inside the graph",
        recipe=json.dumps(state["recipe"]),
        run=run_name,
        checkpoint=ckpt_path.name,
        epoch=str(state.get("epoch", "")),
        exporter=exporter,
        tta=tta,
        parity=json.dumps({"max_abs_diff": max_diff, "top1_agreement": agreement, "images": len(images)}),
        **extra,
    )
    doc = (
        f"clfkit export of {run_name} ({ckpt_path.name}): {len(state['class_names'])} classes"
        f"{', flip TTA' if tta == 'flip' else ''}{', int8' if int8 else ''}"
        f"{', temperature-scaled' if calibrate else ''}"
    )
    write_bytes(out, _with_metadata(model_bytes, meta, state, doc))
    return ExportResult(
        out,
        max_diff,
        agreement,
        len(images),
        ckpt_path,
        _note(run_dir, ckpt_path, state),
        exporter,
        tta,
        int8_report,
        calibration,
    )


def _note(run_dir: Path, ckpt_path: Path, state: dict) -> str:
    """What was exported when it is not a finished run's best.pt: a run stopped (or still
    training) exports its best epoch so far, which a finished run may well beat."""
    notes = [n for n in [unfinished_note(run_dir, state)] if n]
    if ckpt_path.name != BEST_PT:
        if not (run_dir / BEST_PT).is_file():
            notes.append("the run has no best.pt")
        notes.append(f"exported {ckpt_path.name} (epoch {state.get('epoch', '?')})")
    elif notes:
        notes.append(f"exported {BEST_PT} (epoch {state.get('epoch', '?')})")
    return "; ".join(notes)
