"""Figures and run read-back, from synthetic histories (no training)."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from clfkit.run.plots import (
    CURVES_INCHES,
    DPI,
    compare_inches,
    compare_runs,
    confusion_inches,
    plot_compare,
    plot_confusion,
    plot_curves,
)
from clfkit.run.run_folder import RunFolderError
from clfkit.run.metrics_log import write_metrics_csv
from clfkit.run.reader import find_runs, rank, read_history, read_run


def fake_run(root, name, peak=0.8, epochs=6, test=0.75, summary=True):
    """A run folder with metrics.jsonl (val acc peaking at epoch 4) and summary.json."""
    run = root / name
    run.mkdir(parents=True)
    rows = []
    for e in range(1, epochs + 1):
        val = peak - 0.05 * abs(e - 4)
        rows.append(
            {
                "epoch": e,
                "train_loss": 2 / e,
                "train_acc": min(0.99, 0.5 + 0.08 * e),
                "val_loss": 1.5 - val,
                "val_acc": val,
                "lr": 0.1,
                "seconds": 1.0,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        (run / "summary.json").write_text(
            json.dumps({"best_epoch": 4, "best_val_acc": peak, "test_acc": test, "wall_seconds": 12.5})
        )
    return run


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        size = im.size
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted file
    return size


def test_run_info_numbers_and_legend(tmp_path):
    info = read_run(fake_run(tmp_path, "a", peak=0.8))
    assert info.best_epoch == 4 and info.best_val_acc == pytest.approx(0.8)
    assert info.train_acc_at_best == pytest.approx(0.82)
    assert info.best_train_acc == pytest.approx(0.98)
    assert info.legend() == "a (0.980, 0.800, 0.750)"
    # unfinished (no summary): best epoch from the history, no test acc
    info = read_run(fake_run(tmp_path, "b", peak=0.7, summary=False))
    assert info.best_epoch == 4 and not info.finished and info.legend().endswith(", -)")


def test_history_tolerates_torn_line_and_rewritten_epochs(tmp_path):
    run = fake_run(tmp_path, "a")
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 6, "train_loss": 9.0, "train_acc": 0.1}) + "\n")  # re-run after resume
        f.write('{"epoch": 7, "train_lo')  # a crash mid-write
    hist = read_history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6] and hist[-1]["train_loss"] == 9.0
    lines = write_metrics_csv(run).read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc") and len(lines) == 7


def test_find_and_rank(tmp_path):
    sweep = tmp_path / "sweep"
    for name, peak in (("x=1", 0.6), ("x=2", 0.9), ("x=3", 0.75)):
        fake_run(sweep, name, peak=peak)
    runs = find_runs([sweep])
    assert [r.path.name for r in rank(runs, "val_acc")] == ["x=2", "x=3", "x=1"]
    assert [r.path.name for r in rank(runs, "val_loss")] == ["x=2", "x=3", "x=1"]  # lowest loss first
    # the same folder name from two sweeps is told apart by the parent
    other = tmp_path / "other"
    fake_run(other, "x=1")
    labels = sorted(r.label for r in find_runs([sweep, other]))
    assert "other/x=1" in labels and "sweep/x=1" in labels
    with pytest.raises(RunFolderError, match="neither a run folder"):
        find_runs([tmp_path / "sweep" / "x=1" / ".." / ".."])
    with pytest.raises(RunFolderError, match="unknown metric"):
        rank(runs, "f1")


@pytest.mark.parametrize("n", [1, 3, 12])
def test_compare_png_size(tmp_path, n):
    runs = [read_run(fake_run(tmp_path, f"r{i}", peak=0.5 + 0.03 * i)) for i in range(n)]
    out = plot_compare(runs, tmp_path / "compare.png", title="t")
    w, h = compare_inches(n)
    assert png_size(out) == (round(w * DPI), round(h * DPI))
    assert h == pytest.approx(compare_inches(1)[1] + 0.26 * (math.ceil(n / 2) - 1))


def test_compare_runs_top(tmp_path):
    for i in range(5):
        fake_run(tmp_path / "s", f"r{i}", peak=0.5 + 0.1 * i)
    path, runs = compare_runs([tmp_path / "s"], tmp_path / "c.png", top=2)
    assert [r.path.name for r in runs] == ["r4", "r3"]
    w, h = compare_inches(2)
    assert png_size(path) == (round(w * DPI), round(h * DPI))


def test_curves_and_confusion_png(tmp_path):
    run = read_run(fake_run(tmp_path, "a"))
    assert png_size(plot_curves(run, tmp_path / "curves.png")) == (
        round(CURVES_INCHES[0] * DPI),
        round(CURVES_INCHES[1] * DPI),
    )
    # a class without test images (an all-zero row) must not break the normalization
    cm = [[5, 1, 0], [0, 0, 0], [2, 0, 7]]
    side = round(confusion_inches(3) * DPI)
    assert png_size(plot_confusion(cm, ["cat", "dog", "bird"], tmp_path / "cm.png")) == (side, side)
    many = [[int(i == j) * 3 for j in range(40)] for i in range(40)]
    side = round(confusion_inches(40) * DPI)
    assert png_size(plot_confusion(many, [f"class_{i}" for i in range(40)], tmp_path / "cm40.png")) == (
        side,
        side,
    )
