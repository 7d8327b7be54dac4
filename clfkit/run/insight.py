"""The insight files of a run, computed in one pass per split: calibration (ECE, reliability
diagram) of the val and the labelled test split, and Grad-CAM maps of the evaluated split.

The trainer calls :func:`write_insight` once, with best.pt's weights in the model, and
``clfkit eval`` with the checkpoint it evaluated; report.html shows what they wrote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from clfkit.run.calibration import (
    ece_fields,
    reliability,
    split_logits,
    write_calibration,
)
from clfkit.run.gradcam import write_cams, write_no_cams


def insight_line(by_split: dict[str, Any], cam: dict[str, Any]) -> str:
    """One console line: the ECE of each split and the Grad-CAM layer (or why there is none)."""
    ece = ", ".join(
        f"{name.removesuffix('_ece')} {value:.4f}" for name, value in by_split.items() if value is not None
    )
    where = (
        f"Grad-CAM on {cam['target_layer']}"
        if cam.get("target_layer")
        else str(cam.get("note") or "no Grad-CAM")
    )
    if cam.get("capped"):
        where += f" ({cam['capped']})"
    return f"calibration: ECE {ece or '-'} (15 equal-width bins); {where}; see report.html"


def write_insight(
    run: str | Path,
    model: torch.nn.Module,
    splits: dict[str, Any],
    *,
    eval_split: str,
    rt: Any,
    class_names: list[str],
    batch_size: int,
    checkpoint: str = "best.pt",
) -> dict[str, Any]:
    """calibration.json, reliability.png (each labelled split of ``splits``: name -> ImageSet or
    None) and cam.json (the ``eval_split`` split); returns summary.json's ``val_ece``/``test_ece``."""
    t0 = time.perf_counter()
    by_split, probs = {}, None
    for name, data in splits.items():
        if data is None or not len(data) or not data.labelled:
            continue
        logits, labels = split_logits(model, data, rt, batch_size)
        by_split[name] = reliability(logits, labels)
        if name == eval_split:
            probs = logits.softmax(1)
    write_calibration(run, by_split, checkpoint, seconds=round(time.perf_counter() - t0, 3))
    if probs is not None:
        write_cams(
            run,
            model,
            splits[eval_split],
            probs=probs,
            split=eval_split,
            class_names=class_names,
            device=rt.device,
            checkpoint=checkpoint,
        )
    else:  # cam.json always describes this evaluation: never an earlier one's maps
        write_no_cams(
            run, eval_split, checkpoint, f"no Grad-CAM: the {eval_split} split has no labelled images"
        )
    return ece_fields(by_split)
