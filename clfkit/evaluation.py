"""Evaluation: one :func:`evaluate` (loss, accuracy, confusion matrix of a model on a labelled
split), used by the trainer every epoch and for the final test, by ``clfkit eval``
(:func:`eval_run`) and so by sweeps.

``eval_run`` recomputes a finished run's reports from ``best.pt`` (on another split, or with
the data moved elsewhere) and also writes ``eval_<split>.json``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clfkit.errors import ClfkitError, DataError
from clfkit.io import write_json
from clfkit.run.folder import holds_run_lock, RunFolder
from clfkit.run.reports import per_class_rows, write_run_reports


@dataclass
class EvalResult:
    """What ``clfkit eval`` computed and the files it wrote."""

    run_dir: Path
    split: str
    acc: float
    loss: float
    images: int
    per_class: list[dict[str, Any]]
    files: list[Path]


@holds_run_lock("evaluate")  # it rewrites the run's reports: not while the run trains
def eval_run(run_dir: str | Path, split: Optional[str] = None, data_root: Optional[str | Path] = None,
             checkpoint: Optional[str] = None, batch_size: int = 256) -> EvalResult:
    """Evaluate ``run_dir/checkpoint`` (default best.pt, or last.pt of an unfinished run) on
    ``split`` (default: test if labelled, else val) of the run's own data, read as the run read
    it (same size, resize, val hold-out and seed); ``data_root`` points a folder dataset
    elsewhere. Rewrites the run's report files, so a checkpoint of another run is refused."""
    from clfkit.build import build_data, build_loss
    from clfkit.run.checkpoint import model_from_checkpoint, run_checkpoint
    from clfkit.recipe import validate_recipe
    from clfkit.trainer import evaluate, resolve_runtime

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
    model = model_from_checkpoint(state).to(rt.device)
    loss_fn = build_loss(recipe, splits.num_classes).to(rt.device)
    ev = evaluate(model, subset, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=batch_size)
    cm = ev["confusion"].tolist()
    rows = per_class_rows(cm, splits.class_names)
    files = write_run_reports(run_dir, cm, splits.class_names, split)
    out = RunFolder(run_dir).eval_json(split)
    write_json(out, {"split": split, "checkpoint": checkpoint, "acc": ev["acc"], "loss": ev["loss"],
                     "images": len(subset), "class_names": splits.class_names, "per_class": rows,
                     "confusion": cm, "data_root": str(data_root) if data_root else None})
    return EvalResult(run_dir, split, ev["acc"], ev["loss"], len(subset), rows, files + [out])
