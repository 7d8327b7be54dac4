"""A run's report files. Every run folder gets, when training ends::

    curves.png      loss and accuracy per epoch, train vs val
    per_class.csv   accuracy (= recall), precision, recall, f1, support per class
    confusion.png   row-normalized confusion matrix, class names on the axes

for the labelled test split, or the val split when there is none. ``clfkit eval``
(clfkit.run.evaluation.eval_run) rewrites them from another checkpoint or split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import torch

from clfkit.util.atomic import atomic_open, write_json
from clfkit.run.run_folder import RunFolder
from clfkit.run.reader import read_run


def per_class(cm: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """Accuracy (= recall), precision and support per class from a confusion matrix."""
    rows = []
    for i, name in enumerate(class_names):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        tp = int(cm[i, i])
        rows.append(
            {
                "class": name,
                "accuracy": tp / support if support else None,
                "precision": tp / predicted if predicted else None,
                "recall": tp / support if support else None,
                "support": support,
            }
        )
    return rows


def per_class_rows(
    confusion, class_names: list[str], top5_hits: Optional[list[int]] = None
) -> list[dict[str, Any]]:
    """Per-class accuracy, precision, recall, f1 and support from a confusion matrix
    (rows: true class); top5_accuracy too when ``top5_hits`` (per true class) are given."""
    rows = per_class(torch.as_tensor(confusion), class_names)
    for i, r in enumerate(rows):
        if top5_hits is not None:
            r["top5_accuracy"] = top5_hits[i] / r["support"] if r["support"] else None
        p, rc = r["precision"], r["recall"]
        r["f1"] = 2 * p * rc / (p + rc) if p is not None and rc is not None and p + rc > 0 else None
    return rows


def write_per_class_csv(rows: list[dict[str, Any]], path: str | Path, split: str) -> Path:
    """per_class.csv: one row per class, ``split`` in the first column; empty cells for None."""
    cols = ["split", "class", "accuracy", "precision", "recall", "f1", "support"]
    if rows and "top5_accuracy" in rows[0]:
        cols.insert(3, "top5_accuracy")
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow(
                [split]
                + [
                    "" if r.get(c) is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c])
                    for c in cols[1:]
                ]
            )
    return Path(path)


def write_run_reports(
    run_dir: str | Path,
    confusion=None,
    class_names: Optional[list[str]] = None,
    split: Optional[str] = None,
    source: Optional[dict[str, Any]] = None,
) -> list[Path]:
    """curves.png always; per_class.csv and confusion.png from ``confusion`` or, by default,
    from the confusion matrix the trainer stored in summary.json, and reports_source.json: what
    they were computed on (``source``: clfkit eval's checkpoint, split and data; by default the
    trainer's best.pt on the run's own data). Returns the files written."""
    # matplotlib only now, when figures are drawn: importing the trainer needs none (a GPU
    # machine's image may lack it; bench/gpu_bench.py's preflight checks it is there)
    from clfkit.run.plots import plot_confusion, plot_curves

    folder = RunFolder(run_dir)
    info = read_run(folder.path)
    files = [plot_curves(info, folder.curves)]
    summary = info.summary or {}
    if confusion is None and summary.get("confusion") is not None:
        confusion = summary["confusion"]
        split = summary.get("eval_split", "test")
    class_names = class_names or summary.get("class_names")
    if confusion is not None and class_names:
        split = split or "test"
        rows = per_class_rows(
            confusion,
            class_names,
            summary.get("top5_hits") if confusion is summary.get("confusion") else None,
        )
        files.append(write_per_class_csv(rows, folder.per_class, split))
        n = sum(sum(r) for r in confusion)
        acc = sum(confusion[i][i] for i in range(len(confusion))) / max(n, 1)
        source = source or {
            "by": "training",
            "checkpoint": "best.pt",
            "data": "the data the run trained on",
            "data_changed": False,
        }
        other = "\nON OTHER DATA THAN TRAINING (report.html says which)" if source.get("data_changed") else ""
        files.append(
            plot_confusion(
                confusion,
                class_names,
                folder.confusion,
                f"{info.label}: {split} split, {n} images\naccuracy {acc:.4f}; rows normalized (%){other}",
            )
        )
        write_json(folder.reports_source, {**source, "split": split, "images": n})
        files.append(folder.reports_source)
    return files
