"""A run's report files, and re-evaluating a finished run (``clfkit eval``).

Every run folder gets, when training ends::

    curves.png      loss and accuracy per epoch, train vs val
    per_class.csv   accuracy (= recall), precision, recall, f1, support per class
    confusion.png   row-normalized confusion matrix, class names on the axes

for the labelled test split, or the val split when there is none. ``eval_run`` recomputes
them from ``best.pt`` (on another split, or with the data moved elsewhere) and also writes
``eval_<split>.json``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from clfkit.errors import ClfkitError, DataError
from clfkit.io import atomic_open, write_json
from clfkit.runs import read_run


@dataclass
class EvalResult:
    run_dir: Path
    split: str
    acc: float
    loss: float
    images: int
    per_class: list[dict[str, Any]]
    files: list[Path]


def per_class(cm: torch.Tensor, class_names: list[str]) -> list[dict[str, Any]]:
    """Accuracy (= recall), precision and support per class from a confusion matrix."""
    rows = []
    for i, name in enumerate(class_names):
        support = int(cm[i].sum())
        predicted = int(cm[:, i].sum())
        tp = int(cm[i, i])
        rows.append({"class": name, "accuracy": tp / support if support else None,
                     "precision": tp / predicted if predicted else None, "recall": tp / support if support else None,
                     "support": support})
    return rows


def per_class_rows(confusion, class_names: list[str]) -> list[dict[str, Any]]:
    """Per-class accuracy, precision, recall, f1 and support from a confusion matrix
    (rows: true class)."""
    rows = per_class(torch.as_tensor(confusion), class_names)
    for r in rows:
        p, rc = r["precision"], r["recall"]
        r["f1"] = 2 * p * rc / (p + rc) if p is not None and rc is not None and p + rc > 0 else None
    return rows


def write_per_class_csv(rows: list[dict[str, Any]], path: str | Path, split: str) -> Path:
    cols = ["split", "class", "accuracy", "precision", "recall", "f1", "support"]
    with atomic_open(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([split] + ["" if r.get(c) is None else (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c])
                                  for c in cols[1:]])
    return Path(path)


def write_run_reports(run_dir: str | Path, confusion=None, class_names: Optional[list[str]] = None,
                      split: Optional[str] = None) -> list[Path]:
    """curves.png always; per_class.csv and confusion.png from ``confusion`` or, by default,
    from the confusion matrix the trainer stored in summary.json. Returns the files written."""
    from clfkit.plots import plot_confusion, plot_curves

    run_dir = Path(run_dir)
    info = read_run(run_dir)
    files = [plot_curves(info, run_dir / "curves.png")]
    summary = info.summary or {}
    if confusion is None and summary.get("confusion") is not None:
        confusion = summary["confusion"]
        split = summary.get("eval_split", "test")
    class_names = class_names or summary.get("class_names")
    if confusion is not None and class_names:
        split = split or "test"
        rows = per_class_rows(confusion, class_names)
        files.append(write_per_class_csv(rows, run_dir / "per_class.csv", split))
        n = sum(sum(r) for r in confusion)
        acc = sum(confusion[i][i] for i in range(len(confusion))) / max(n, 1)
        files.append(plot_confusion(confusion, class_names, run_dir / "confusion.png",
                                    f"{info.label}: {split} split, {n} images\n"
                                    f"accuracy {acc:.4f}; rows normalized (%)"))
    return files


def eval_run(run_dir: str | Path, split: Optional[str] = None, data_root: Optional[str | Path] = None,
             checkpoint: Optional[str] = None, batch_size: int = 256, tta: str = "none") -> EvalResult:
    """Evaluate ``run_dir/checkpoint`` (default best.pt, or last.pt of an unfinished run) on
    ``split`` (default: test if labelled, else val) of the run's own data, read as the run read
    it (same size, resize, val hold-out and seed); ``data_root`` points a folder dataset
    elsewhere. Rewrites the run's report files, so a checkpoint of another run is refused.
    ``tta="flip"`` evaluates the flip-averaging model that ``export --tta flip`` writes; it
    writes ``eval_<split>_tta-flip.json`` only, leaving the report files of the plain model."""
    from clfkit.build import build_data, build_loss
    from clfkit.checkpoint import model_from_checkpoint, run_checkpoint
    from clfkit.recipe import validate_recipe
    from clfkit.train import evaluate, resolve_runtime
    from clfkit.tta import with_tta

    run_dir = Path(run_dir)
    ckpt_path, state = run_checkpoint(run_dir, checkpoint, "eval")
    checkpoint = ckpt_path.name
    data = dict(state["recipe"])
    if data_root is not None:
        source = dict(data["data"]["source"])
        if "root" not in source:
            raise DataError(f"--data-root: this run's dataset {source['name']!r} is not read from a folder "
                            f"(it has no root to replace)")
        source["root"] = str(data_root)
        data["data"] = {**data["data"], "source": source}
    recipe = validate_recipe(data, source=f"{run_dir / checkpoint} recipe")
    splits = build_data(recipe)
    if splits.class_names != state["class_names"]:
        raise DataError(f"the data now has classes {splits.class_names}, but the run was trained on "
                        f"{state['class_names']}")
    if split is None:
        split = "test" if splits.test is not None and splits.test.labelled else "val"
    if split not in ("test", "val"):
        raise ClfkitError(f"--split {split!r}: choose test or val")
    subset = splits.test if split == "test" else splits.val
    if subset is None or len(subset) == 0 or not subset.labelled:
        other = "val" if split == "test" else "test"
        raise DataError(f"this run's data has no labelled {split} split; try --split {other}")
    rt = resolve_runtime(recipe)
    model = with_tta(model_from_checkpoint(state).to(rt.device), tta)
    loss_fn = build_loss(recipe, splits.num_classes).to(rt.device)
    ev = evaluate(model, subset, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=batch_size)
    cm = ev["confusion"].tolist()
    rows = per_class_rows(cm, splits.class_names)
    files = write_run_reports(run_dir, cm, splits.class_names, split) if tta == "none" else []
    out = run_dir / (f"eval_{split}.json" if tta == "none" else f"eval_{split}_tta-{tta}.json")
    write_json(out, {"split": split, "tta": tta, "checkpoint": checkpoint, "acc": ev["acc"], "loss": ev["loss"],
                     "images": len(subset), "class_names": splits.class_names, "per_class": rows,
                     "confusion": cm, "data_root": str(data_root) if data_root else None})
    return EvalResult(run_dir, split, ev["acc"], ev["loss"], len(subset), rows, files + [out])
