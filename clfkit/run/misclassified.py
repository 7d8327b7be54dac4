"""The most confidently misclassified images of a run's evaluation split, for report.html.

The trainer calls :func:`write_mistakes` once, right after it has evaluated best.pt (the model
then holds best.pt's weights), so the report shows the images best.pt gets wrong with the
highest confidence; ``clfkit eval`` rewrites it for the checkpoint and split it evaluated. ``mistakes.json`` holds, per image: its index in the split, its path when
the data came from a folder, true and predicted class, the predicted probability and a small
PNG thumbnail as base64 (so report.html can inline it without reading the data again).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clfkit.run.calibration import split_logits
from clfkit.util.atomic import write_json
from clfkit.run.run_folder import MISTAKES_JSON as MISTAKES_FILE  # one home for run file names

THUMB_PIXELS = 96  # the longer side of a thumbnail


def _thumbnail_png(image: torch.Tensor) -> str:
    """A uint8 (C, H, W) image as a base64 PNG, its longer side THUMB_PIXELS."""
    arr = image.permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
    scale = THUMB_PIXELS / max(pil.size)
    pil = pil.resize(
        (max(1, round(pil.width * scale)), max(1, round(pil.height * scale))),
        Image.NEAREST if max(pil.size) < THUMB_PIXELS else Image.BILINEAR,
    )
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@torch.inference_mode()
def most_confident_mistakes(
    model: torch.nn.Module, data: Any, rt: Any, class_names: list[str], batch_size: int, k: int = 16
) -> list[dict[str, Any]]:
    """The ``k`` misclassified images of ``data`` (a labelled clfkit.data.ImageSet) with the
    highest predicted probability, most confident first. ``rt``: the trainer's Runtime (device,
    autocast, channels_last); duck-typed so this module needs nothing from the trainer."""
    logits, labels = split_logits(model, data, rt, batch_size)
    if not len(logits):
        return []
    prob, pred = logits.softmax(1).max(1)
    wrong = (pred != labels).nonzero().flatten()
    order = wrong[prob[wrong].argsort(descending=True)][:k]
    found = []
    for i in order.tolist():
        found.append(
            {
                "index": i,
                "path": data.paths[i] if data.paths is not None else None,
                "true": class_names[int(labels[i])],
                "predicted": class_names[int(pred[i])],
                "confidence": round(float(prob[i]), 4),
                "png_base64": _thumbnail_png(data.images[i]),
            }
        )
    return found


def write_mistakes(
    run: Path,
    model: torch.nn.Module,
    data: Any,
    *,
    split: str,
    rt: Any,
    class_names: list[str],
    batch_size: int,
    k: int = 16,
    checkpoint: str = "best.pt",
) -> Path:
    """``run/mistakes.json``: :func:`most_confident_mistakes` of ``data`` (the ``split`` split)
    by ``model`` (the weights of ``checkpoint``)."""
    found = most_confident_mistakes(model, data, rt, class_names, batch_size, k)
    path = Path(run) / MISTAKES_FILE
    write_json(path, {"split": split, "checkpoint": checkpoint, "images": int(len(data)), "mistakes": found})
    return path
