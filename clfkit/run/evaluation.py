"""Evaluation: one :func:`evaluate` (loss, accuracy, confusion matrix of a model on a labelled
split), used by the trainer every epoch and for the final test, by ``clfkit eval``
(:func:`eval_run`) and so by sweeps.

``eval_run`` recomputes a finished run's reports from ``best.pt`` (on another split, or with
the data moved elsewhere), writes ``eval_<split>.json`` and rebuilds ``report.html``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from clfkit.train.build import build_data, build_loss
from clfkit.data import ImageSet, Splits
from clfkit.train.engine import distributed
from clfkit.train.engine.batches import eval_batches
from clfkit.train.engine.runtime import Runtime, resolve_runtime
from clfkit.errors import ClfkitError, DataError
from clfkit.util.safe_names import check_same_spelling
from clfkit.util.atomic import write_json
from clfkit.run.misclassified import write_mistakes
from clfkit.run.report_page import write_run_report
from clfkit.run.checkpoint import (
    load_checkpoint,
    load_weights,
    model_from_checkpoint,
    run_checkpoint,
    unfinished_note,
)
from clfkit.run.data_record import compare_eval_data, recipe_on_data
from clfkit.run.run_folder import CALIBRATION_JSON, CAM_JSON, RELIABILITY_PNG, RunFolder, holds_run_lock
from clfkit.run.insight import insight_line, write_insight
from clfkit.run.per_class import per_class, per_class_rows, write_run_reports


TOP_K = 5  # top-5 accuracy, reported when a task has more than 5 classes


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: ImageSet, *, rt: Runtime, loss_fn: nn.Module, num_classes: int, batch_size: int
) -> dict[str, Any]:
    """Loss, accuracy and the confusion matrix (rows: true class) on a labelled split; with
    more than 5 classes also top-5 accuracy (``top5_acc``) and its hits per true class."""
    model.eval()
    data = distributed.eval_shard(model, data)  # DDP: this rank's part
    loss_sum = torch.zeros((), device=rt.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=rt.device)
    top5_hits = torch.zeros(num_classes, dtype=torch.long, device=rt.device)
    for x, y in eval_batches(data, batch_size, rt.device):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out = model(x)
            loss = loss_fn(out, y)
        loss_sum += loss.float() * y.shape[0]
        # accumulate in place: bincount sizes its output from the data's max (a host sync per
        # batch on CUDA); the counts are read once, after the loop
        cells = y * num_classes + out.argmax(1)
        confusion.index_put_((cells,), torch.ones_like(cells), accumulate=True)
        if num_classes > TOP_K:  # top-k counts only where k < classes
            hit = (out.topk(TOP_K, 1).indices == y[:, None]).any(1)
            top5_hits.index_put_((y,), hit.to(top5_hits.dtype), accumulate=True)
    distributed.all_reduce_(loss_sum, confusion, top5_hits)
    cm = confusion.view(num_classes, num_classes).cpu()
    n = int(cm.sum())
    top5 = num_classes > TOP_K
    return {
        "loss": float(loss_sum) / max(n, 1),
        "acc": float(cm.diag().sum()) / max(n, 1),
        "confusion": cm,
        "top5_acc": float(top5_hits.sum()) / max(n, 1) if top5 else None,
        "top5_hits": top5_hits.cpu().tolist() if top5 else None,
    }


def evaluate_best(
    best_pt: Path,
    model: nn.Module,
    splits: Splits,
    val_set: Optional[ImageSet],
    *,
    rt: Runtime,
    loss_fn: nn.Module,
    batch_size: int,
) -> dict[str, Any]:
    """The trainer's final evaluation: load best.pt into ``model`` and evaluate it on the
    labelled test split (the val split when there is none). Returns the summary's eval_split,
    per_class and confusion, plus test_acc, test_loss and test_images when it was the test
    split; nothing without either. ``val_set``: the val split as training evaluated it (on the
    GPU when it lives there)."""
    if splits.test is not None and splits.test.labelled:
        split, data = "test", splits.test
    elif val_set is not None:
        split, data = "val", val_set
    else:
        return {}
    load_weights(model, load_checkpoint(best_pt, map_location=rt.device)["model"], str(best_pt))
    ev = evaluate(model, data, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=batch_size)
    out = {
        "eval_split": split,
        "per_class": per_class(ev["confusion"], splits.class_names),
        "confusion": ev["confusion"].tolist(),
    }
    if ev["top5_hits"] is not None:
        out["top5_hits"] = ev["top5_hits"]  # per true class: per_class.csv's top5_accuracy
        out[f"{split}_top5_acc"] = ev["top5_acc"]
    if split == "test":
        out.update(test_acc=ev["acc"], test_loss=ev["loss"], test_images=len(splits.test))
    return out


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
    note: str = ""  # a stopped run: whose numbers these are
    insight: str = ""  # the ECE of val and test, the Grad-CAM layer (clfkit.run.insight)
    data: str = ""  # the data evaluated, against the data the run trained on


@holds_run_lock("evaluate")  # it rewrites the run's reports: not while the run trains
def eval_run(
    run_dir: str | Path,
    split: Optional[str] = None,
    data_root: Optional[str | Path] = None,
    checkpoint: Optional[str] = None,
    batch_size: int = 256,
    tta: str = "none",
) -> EvalResult:
    """Evaluate ``run_dir/checkpoint`` (default best.pt, or last.pt of an unfinished run) on
    ``split`` (default: test if labelled, else val) of the run's own data, read as the run read
    it (same size, resize, val hold-out and seed); ``data_root`` points a folder dataset
    elsewhere. Rewrites the run's report files, so a checkpoint of another run is refused.
    ``tta="flip"`` evaluates the flip-averaging model that ``export --tta flip`` writes; it
    writes ``eval_<split>_tta-flip.json``, leaving the report files of the plain model. Either
    way report.html is rebuilt last, so it shows this evaluation."""
    from clfkit.deploy.tta import with_tta

    run_dir = Path(run_dir)
    ckpt_path, state = run_checkpoint(run_dir, checkpoint, "eval")
    checkpoint = ckpt_path.name
    recipe, splits = _run_data(run_dir / checkpoint, state, data_root)
    # warned, not refused: which data these numbers are on is said on every report file
    data_changed, data_text = compare_eval_data(state, splits, recipe.data.source, data_root, run_dir)
    split, subset = _eval_split(splits, split)
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    model = with_tta(model_from_checkpoint(state).to(rt.device), tta)
    loss_fn = build_loss(recipe, splits.num_classes, splits).to(rt.device)
    ev = evaluate(
        model, subset, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=batch_size
    )
    cm = ev["confusion"].tolist()
    rows = per_class_rows(cm, splits.class_names)
    files, calibration = [], {}
    if tta == "none":  # the report files describe the plain model: now this checkpoint on this split
        source = {
            "by": "clfkit eval",
            "checkpoint": checkpoint,
            "data_root": str(data_root) if data_root else None,
            "data": data_text,
            "data_changed": data_changed,
        }
        files, calibration = _write_reports(
            run_dir, model, splits, split=split, cm=cm, source=source, rt=rt, batch_size=batch_size
        )
    out = RunFolder(run_dir).eval_json(split, tta)
    write_json(
        out,
        {
            "split": split,
            "tta": tta,
            "checkpoint": checkpoint,
            "acc": ev["acc"],
            "loss": ev["loss"],
            "images": len(subset),
            "class_names": splits.class_names,
            "per_class": rows,
            "confusion": cm,
            "data_root": str(data_root) if data_root else None,
            "data_changed": data_changed,
            "data": data_text,
            "run_finished": RunFolder(run_dir).finished,
            **calibration,
        },
    )
    # last: report.html inlines every file above, so it never shows the numbers of before
    files += [out, write_run_report(run_dir)]
    note = unfinished_note(run_dir, state)
    if note:
        note += f"; evaluated {checkpoint} (epoch {state.get('epoch', '?')})"
    insight = insight_line(calibration, _read_cam(run_dir)) if tta == "none" else ""
    return EvalResult(
        run_dir, split, ev["acc"], ev["loss"], len(subset), rows, files, note, insight, data_text
    )


def _run_data(checkpoint_path: Path, state: dict[str, Any], data_root: Optional[str | Path]):
    """The recipe of the checkpoint (its data under ``data_root`` when given) and the data read as
    the run read it; classes other than the run's (or spelled otherwise) are an error."""
    recipe = recipe_on_data(state["recipe"], data_root, f"{checkpoint_path} recipe", "clfkit eval")
    splits = build_data(recipe)
    check_same_spelling(
        state["class_names"], splits.class_names, "the run's classes (its checkpoint)", "the data's classes"
    )
    if splits.class_names != state["class_names"]:
        raise DataError(
            f"the data now has classes {splits.class_names}, but the run was trained on "
            f"{state['class_names']}"
        )
    return recipe, splits


def _eval_split(splits, split: Optional[str]) -> tuple[str, Any]:
    """The split ``clfkit eval`` evaluates (default: test if labelled, else val) and its data;
    a split that is not there, or has no labels, is an error naming the other."""
    if split is None:
        split = "test" if splits.test is not None and splits.test.labelled else "val"
    if split not in ("test", "val"):
        raise ClfkitError(f"--split {split!r}: choose test or val")
    subset = splits.test if split == "test" else splits.val
    if subset is None or len(subset) == 0 or not subset.labelled:
        other = "val" if split == "test" else "test"
        raise DataError(f"this run's data has no labelled {split} split; try --split {other}")
    return split, subset


def _write_reports(
    run_dir: Path, model, splits, *, split: str, cm: list, source: dict[str, Any], rt, batch_size: int
) -> tuple[list[Path], dict[str, Any]]:
    """The run's report files for the plain model, now this checkpoint on this split: per-class
    tables and figures, mistakes.json, the insight files (ECE of val and test, Grad-CAM)."""
    checkpoint, subset = source["checkpoint"], splits.test if split == "test" else splits.val
    files = write_run_reports(run_dir, cm, splits.class_names, split, source)
    files.append(
        write_mistakes(
            run_dir,
            model,
            subset,
            split=split,
            rt=rt,
            class_names=splits.class_names,
            batch_size=batch_size,
            checkpoint=checkpoint,
        )
    )
    calibration = write_insight(
        run_dir,
        model,
        {"val": splits.val, "test": splits.test},
        eval_split=split,
        rt=rt,
        class_names=splits.class_names,
        batch_size=batch_size,
        checkpoint=checkpoint,
    )
    files += [RunFolder(run_dir).path / n for n in (CALIBRATION_JSON, RELIABILITY_PNG, CAM_JSON)]
    return files, calibration


def _read_cam(run_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((run_dir / CAM_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
