"""How far a model's probabilities can be trusted: expected calibration error (ECE), the
reliability diagram, and temperature scaling.

Binning: ``BINS`` (15) equal-width bins of the top-1 softmax probability over [0, 1] (the
first bin closed at 0, the others ``(lo, hi]``), as Guo et al. 2017 ("On Calibration of Modern
Neural Networks") and torchmetrics' ``MulticlassCalibrationError(norm="l1")`` bin it. ECE is
the image-weighted mean over the bins of |accuracy - mean confidence|: 0 when a model that says
"80%" is right 80% of the time; an overconfident model's ECE is its surplus confidence.

The trainer (best.pt) and ``clfkit eval`` (the checkpoint it evaluates) write
``calibration.json`` (per split: ECE, accuracy, mean confidence, the bins) and
``reliability.png`` for the val and the labelled test split; report.html shows both.
``clfkit export --calibrate`` fits a temperature T on the val split with :func:`fit_temperature`
and divides the graph's logits by it (clfkit.deploy.export.calibrate).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import torch

from clfkit.util.atomic import write_bytes, write_json
from clfkit.util.rows import Rows
from clfkit.train.engine.batches import eval_batches
from clfkit.run.run_folder import CALIBRATION_JSON, RELIABILITY_PNG

BINS = 15
BINNING = f"{BINS} equal-width bins of the top-1 probability over [0, 1]"


@torch.inference_mode()
def split_logits(
    model: torch.nn.Module, data: Any, rt: Any, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits, labels) of every image of a labelled split, on the CPU. ``rt``: a
    Runtime (device, autocast, channels_last), duck-typed."""
    model.eval()
    logits, labels = Rows(len(data)), Rows(len(data))  # not lists: see clfkit.util.rows
    for x, y in eval_batches(data, batch_size, rt.device):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            logits.put(model(x).float())
        labels.put(y)
    return logits.result((0, 0)), labels.result((0,), torch.long)


def reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, Any]:
    """ECE, accuracy, mean confidence and the per-bin figures of ``logits / temperature``."""
    probs = (logits.double() / temperature).softmax(1)
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    n = len(labels)
    edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
    # bin k holds (edges[k], edges[k+1]]; a confidence of exactly 0 cannot occur (top-1 >= 1/classes)
    which = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, BINS - 1)
    bins, ece = [], 0.0
    for k in range(BINS):
        inside = which == k
        count = int(inside.sum())
        acc = float(right[inside].mean()) if count else None
        mean_conf = float(conf[inside].mean()) if count else None
        if count:
            ece += count / n * abs(acc - mean_conf)
        bins.append(
            {
                "lo": round(float(edges[k]), 4),
                "hi": round(float(edges[k + 1]), 4),
                "count": count,
                "accuracy": acc,
                "confidence": mean_conf,
            }
        )
    return {
        "ece": ece if n else None,
        "images": n,
        "accuracy": float(right.mean()) if n else None,
        "mean_confidence": float(conf.mean()) if n else None,
        "bins": bins,
    }


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 that minimizes the NLL of ``softmax(logits / T)`` (Guo et al.):
    L-BFGS on log T (so T stays positive), started at T = 1. Dividing by T > 0 never changes
    the top-1 class."""
    logits, labels = (
        logits.double().clone(),
        labels.long().clone(),
    )  # not inference tensors: autograd needs them
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t) or nll(logits, labels, t) > nll(logits, labels, 1.0):
        return 1.0  # no temperature beats the model as it is (e.g. every image right with p = 1)
    return t


def write_calibration(
    run: str | Path, by_split: dict[str, Any], checkpoint: str = "best.pt", seconds: float | None = None
) -> list[Path]:
    """``calibration.json`` and ``reliability.png`` of ``by_split`` (split name -> :func:`reliability`)
    for ``checkpoint``; ``seconds``: what computing them took."""
    run = Path(run)
    write_json(
        run / CALIBRATION_JSON,
        {"checkpoint": checkpoint, "binning": BINNING, "seconds": seconds, "splits": by_split},
    )
    return [run / CALIBRATION_JSON, plot_reliability(by_split, run / RELIABILITY_PNG, checkpoint)]


def ece_fields(by_split: dict[str, Any]) -> dict[str, float | None]:
    """summary.json's ``val_ece`` / ``test_ece`` of ``by_split`` (split name -> :func:`reliability`)."""
    return {f"{name}_ece": r["ece"] for name, r in by_split.items()}


def plot_reliability(by_split: dict[str, Any], path: Path, checkpoint: str) -> Path:
    """reliability.png: per split, accuracy against mean confidence per bin (the diagonal is a
    calibrated model), bar widths the bins, the share of images per bin below."""
    # matplotlib only now, when the figure is drawn: importing the trainer needs none (a GPU
    # machine's image may lack it; a training epoch keeps it out of memory)
    import matplotlib
    from matplotlib.figure import Figure

    splits = list(by_split) or ["none"]
    fig = Figure(figsize=(5.0 * len(splits), 5.2), dpi=100, layout="constrained")
    axes = fig.subplots(2, len(splits), squeeze=False, height_ratios=[3, 1], sharex=True)
    with matplotlib.rc_context({"text.parse_math": False}):
        for col, name in enumerate(splits):
            top, bottom = axes[0][col], axes[1][col]
            top.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
            r = by_split.get(name)
            if r:
                filled = [b for b in r["bins"] if b["count"]]
                top.bar(
                    [b["lo"] for b in filled],
                    [b["accuracy"] for b in filled],
                    width=1 / BINS,
                    align="edge",
                    edgecolor="#235",
                    color="#58c",
                    alpha=0.8,
                    label="accuracy in bin",
                )
                top.plot(
                    [b["confidence"] for b in filled],
                    [b["accuracy"] for b in filled],
                    "o",
                    color="#c33",
                    ms=3,
                    label="(mean confidence, accuracy)",
                )
                bottom.bar(
                    [b["lo"] for b in r["bins"]],
                    [b["count"] / max(r["images"], 1) for b in r["bins"]],
                    width=1 / BINS,
                    align="edge",
                    color="0.6",
                )
                top.set_title(f"{name}: ECE {r['ece']:.4f} on {r['images']} images")
            top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
            top.legend(loc="upper left", fontsize=8)
            bottom.set(xlabel="top-1 probability", ylabel="share of images")
        fig.suptitle(f"reliability of {checkpoint} ({BINS} equal-width bins)", fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    write_bytes(path, buf.getvalue())
    return path
