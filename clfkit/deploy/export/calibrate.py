"""``clfkit export --calibrate``: temperature scaling fitted on the run's val split and baked
into the graph, so the softmax of the exported logits (what predict prints as confidence)
means what it says.

The exported model becomes ``logits / T`` (one Div node after the network); T is fitted by
L-BFGS on the val split's negative log-likelihood (clfkit.run.calibration.fit_temperature).
Dividing by T > 0 keeps every top-1 class, which is checked on the val split, and parity is
then proven on the scaled graph as on any other. The metadata's ``calibration`` entry records
T, the split and the ECE and NLL before and after.
"""

from __future__ import annotations

import contextlib
import types
from pathlib import Path
from typing import Any, Optional

import torch

from clfkit.errors import ExportError
from clfkit.run.calibration import (
    BINNING,
    fit_temperature,
    nll,
    reliability,
    split_logits,
)

SMALL_VAL = 200  # fewer val images than this: the fitted T is noisy, and the result says so


class TemperatureScaled(torch.nn.Module):
    """``model``'s logits divided by a fixed temperature."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def _val_split(state: dict, data_root: Optional[str | Path] = None) -> Any:
    """The run's val split, read as the run read it (its recipe: same data, size, hold-out, seed);
    ``data_root`` (``export --data-root``) reads its folder dataset from there instead."""
    from clfkit.deploy.export.run_data import read_run_splits

    splits = read_run_splits(state, data_root, "--calibrate", "fits the temperature on the run's val images")
    val = splits.val
    if val is None or len(val) == 0 or not val.labelled:
        raise ExportError(
            "--calibrate fits the temperature on the run's val split, and this run's data has no "
            "labelled val split (data.val_fraction: 0 and no val folder); export without --calibrate"
        )
    return val


def calibrate(
    model: torch.nn.Module, state: dict, batch_size: int = 256, data_root: Optional[str | Path] = None
) -> tuple[TemperatureScaled, dict[str, Any]]:
    """(``model`` scaled by the temperature fitted on the run's val split, the metadata's report)."""
    val = _val_split(state, data_root)
    cpu = types.SimpleNamespace(
        device=torch.device("cpu"), channels_last=False, autocast=contextlib.nullcontext
    )
    logits, labels = split_logits(model, val, cpu, batch_size)
    t = fit_temperature(logits, labels)
    if not torch.equal((logits / t).argmax(1), logits.argmax(1)):  # T > 0 cannot; a NaN logit could
        raise ExportError(
            f"--calibrate: temperature {t:.4g} would change a top-1 class on the val split; "
            f"nothing was written"
        )
    before, after = reliability(logits, labels), reliability(logits, labels, t)
    report = {
        "temperature": t,
        "split": "val",
        "images": len(labels),
        "binning": BINNING,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
    }
    return TemperatureScaled(model, t).eval(), report


def describe(report: dict[str, Any]) -> str:
    """The export's line about the calibration (``report``: :func:`calibrate`'s)."""
    return (
        f"calibrated: temperature {report['temperature']:.4f} fitted on {report['images']} val images; ECE "
        f"{report['ece_before']:.4f} -> {report['ece_after']:.4f}, NLL {report['nll_before']:.4f} -> "
        f"{report['nll_after']:.4f}"
        + (" (few images: the temperature is a rough estimate)" if report["images"] < SMALL_VAL else "")
    )
