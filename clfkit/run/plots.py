"""The figures of a study: a run's curves, its confusion matrix, and runs overlaid.

matplotlib through ``matplotlib.figure.Figure`` (Agg), never pyplot: no display is needed,
no global state is touched (safe in notebooks and worker processes), and each figure has a
fixed pixel size, so reports can lay them out. PNGs are written atomically.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path
from typing import Callable, ParamSpec, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from clfkit.util.atomic import write_bytes
from clfkit.util.output_file import overwrite_refusal
from clfkit.run.run_folder import RunFolderError
from clfkit.run.reader import SELECTED_ON_VAL, RunInfo, find_runs, rank

DPI = 100
CURVES_INCHES = (12.0, 4.5)  # curves.png: 1200 x 450 px
COMPARE_PANEL_INCHES = (14.0, 9.0)  # the 2x2 panels of compare.png; the legend adds rows below
LEGEND_ROW_INCHES = 0.26
P = ParamSpec("P")
# best.pt is the best val epoch, or the last epoch of a run without a val split (clfkit.run.reader)
LEGEND_TITLE = "run (best train acc, best val acc, test acc of best.pt: best val epoch, or last without val)"


def _plain_text(plot: Callable[P, Path]) -> Callable[P, Path]:
    """Draw every text of the figure as given: class names, run names and titles come from
    folder names and options, and matplotlib reads text between two ``$`` as math (a class
    folder named ``$\\frac$`` ended the run with a traceback, ``$x$`` showed as math)."""

    @functools.wraps(plot)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> Path:
        with matplotlib.rc_context({"text.parse_math": False}):  # tick labels are made at savefig
            return plot(*args, **kwargs)

    return drawn


def _save(fig: Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes(path, buf.getvalue())
    return Path(path)


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


# --------------------------------------------------------------------------- one run
@_plain_text
def plot_curves(run: RunInfo, path: str | Path) -> Path:
    """curves.png: loss and accuracy per epoch, train vs val, best.pt's epoch marked (the best
    val epoch; the last epoch when there is no val split)."""
    fig = Figure(figsize=CURVES_INCHES, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    best = run.best_epoch
    on_val = run.selected_on == SELECTED_ON_VAL
    for ax, what in zip(axes, ("loss", "acc")):
        for split in ("train", "val"):
            x, y = _series(run.history, f"{split}_{what}")
            if x:
                ax.plot(x, y, "-", marker="o" if len(x) <= 30 else None, ms=3, label=split)
        if best:
            ax.axvline(
                best,
                color="0.6",
                ls=":",
                lw=1,
                label=f"best val (epoch {best})" if on_val else f"best.pt = last epoch ({best})",
            )
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if what == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    test = f", test of best.pt {run.test_acc:.4f}" if run.test_acc is not None else ""
    val = (
        f"best val acc {run.best_val_acc:.4f} (epoch {best})"
        if on_val and run.best_val_acc is not None
        else f"no val split: best.pt is the last epoch ({best})"
        if best
        else "no epochs yet"
    )
    fig.suptitle(f"{run.label}: {val}{test}", fontsize=11)
    return _save(fig, path)


def confusion_inches(num_classes: int) -> float:
    """Side of the square confusion.png in inches (grows with the classes, 5 to 16)."""
    return float(min(16.0, max(5.0, 2.5 + 0.5 * num_classes)))


@_plain_text
def plot_confusion(
    cm: Sequence[Sequence[int]], class_names: list[str], path: str | Path, title: str = ""
) -> Path:
    """confusion.png: rows (true class) normalized to 1, class names on both axes, the
    percentage in each cell when there are at most 30 classes."""
    cm = np.asarray(cm, dtype=np.float64)
    n = len(class_names)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = confusion_inches(n)
    fig = Figure(figsize=(side, side), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = np.arange(n)
    fontsize = 9 if n <= 20 else 6
    ax.set_xticks(
        ticks,
        labels=class_names,
        rotation=45 if n > 4 else 0,
        ha="right" if n > 4 else "center",
        fontsize=fontsize,
    )
    ax.set_yticks(ticks, labels=class_names, fontsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=fontsize - 1,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set_title(title or "confusion (rows normalized, %)", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- many runs
def compare_inches(n_runs: int, ncol: int = 2) -> tuple[float, float]:
    """(width, height) of compare.png in inches: the 2x2 panels plus the legend below (its
    title and one row per ``ncol`` runs)."""
    w, h = COMPARE_PANEL_INCHES
    return w, h + _legend_inches(n_runs, ncol)


def _legend_inches(n_runs: int, ncol: int) -> float:
    return LEGEND_ROW_INCHES * (math.ceil(max(n_runs, 1) / ncol) + 1) + 0.2


@_plain_text
def plot_compare(runs: list[RunInfo], path: str | Path, title: str = "", ncol: int = 2) -> Path:
    """compare.png: train loss, val loss, train acc, val acc of every run overlaid (2x2);
    one legend below, "label (best train, best val, test of best.pt)"."""
    w, h = compare_inches(len(runs), ncol)
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 2)
    colors = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    panels = [
        ("train_loss", "train loss"),
        ("val_loss", "val loss"),
        ("train_acc", "train accuracy"),
        ("val_acc", "val accuracy"),
    ]
    handles = []
    for i, run in enumerate(runs):
        color = colors(i % colors.N)
        for ax, (key, _) in zip(axes.flat, panels):
            x, y = _series(run.history, key)
            if not x:
                continue
            (line,) = ax.plot(x, y, color=color, lw=1.4, label=run.legend())
            if key == "val_acc" and run.best_epoch and run.best_val_acc is not None:
                ax.plot([run.best_epoch], [run.best_val_acc], "o", color=color, ms=4)
            if key == "train_loss":
                handles.append(line)
    for ax, (key, name) in zip(axes.flat, panels):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=ncol,
            fontsize=9,
            frameon=False,
            title=LEGEND_TITLE,
            title_fontsize=9,
        )
    fig.suptitle(title or "comparison", fontsize=11)
    return _save(fig, path)


def compare_runs(
    paths: list[str | Path],
    output: str | Path = "compare.png",
    top: int = 10,
    metric: str = "val_acc",
    title: str = "",
) -> tuple[Path, list[RunInfo]]:
    """``clfkit compare``: the ``top`` runs (by ``metric``) among run folders and sweep
    folders, overlaid in one compare.png. Returns the file and the runs drawn, best first."""
    _check_output(Path(output))
    runs = rank(find_runs(list(paths)), metric)[:top]
    for r in runs:
        r.label = r.label.replace(",", ", ")
    title = title or f"top {len(runs)} run(s) by {metric.replace('_', ' ')}"
    return plot_compare(runs, output, title=title), runs


def _check_output(out: Path) -> None:
    """Refuse an output that would replace a file of a run (its best.pt, curves.png, ...) or
    any other file that is not a picture, links resolved (clfkit.util.output_file): compare.png is
    written as PNG whatever its name."""
    if out.is_dir():
        raise RunFolderError(f"-o {out} is a folder; give a file name, e.g. -o {out / 'compare.png'}")
    why = overwrite_refusal(out, (".png",), "picture")
    if why:
        raise RunFolderError(f"-o {out} {why}. Give a new file name, e.g. -o compare.png")
