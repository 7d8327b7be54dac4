"""What a model says about each image: predicted probabilities and penultimate features.

Out-of-sample probabilities are what confident learning needs: a run's model on the val and
test splits (it never trained on them), and for the train split K models each trained on the
other folds (:func:`fold_probabilities`, ``--folds K``). The features are the input of the
model's last linear layer (its classifier head), read by a forward hook, so any clfkit model
with a linear head (the built-in CNNs, timm models) gives them without a code change.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from clfkit.train.build import build_data
from clfkit.data import ImageSet, Splits
from clfkit.train.engine.runtime import resolve_runtime
from clfkit.errors import DataError
from clfkit.data.image_files import escape_path
from clfkit.recipe import Recipe, validate_recipe
from clfkit.run.checkpoint import load_checkpoint, model_from_checkpoint, run_checkpoint, unfinished_note
from clfkit.run.run_folder import RunFolder
from clfkit.util.rows import Rows
from clfkit.train.trainer import train


@dataclass
class SplitOutputs:
    """One split's images as the model saw them: their catalog rows, probabilities (N, C) and
    penultimate features (N, D) (None when the model has no linear head)."""

    rows: np.ndarray
    probs: np.ndarray
    features: Optional[np.ndarray]


def _head(model: torch.nn.Module) -> Optional[torch.nn.Linear]:
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


@torch.inference_mode()
def predict(
    model: torch.nn.Module, images: Any, rt: Any, batch_size: int = 256
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(softmax probabilities, penultimate features or None) of uint8 ``images``, in batches."""
    model.eval()
    head = _head(model)
    probs, features = Rows(len(images)), Rows(len(images))  # not lists: see clfkit.util.rows
    usable = [head is not None]  # False once the head's inputs do not line up one per image

    def keep(module, args):
        try:
            features.put(args[0].float().flatten(1))
        except (ValueError, RuntimeError):  # a head called twice a forward, or on other shapes
            usable[0] = False

    hook = head.register_forward_pre_hook(keep) if head else None
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(rt.device)
            with rt.autocast():
                probs.put(model(x).float().softmax(1))
    finally:
        if hook is not None:
            hook.remove()
    p = probs.result((0, _num_outputs(model))).numpy()
    ok = usable[0] and features.filled == probs.filled and features.filled
    return p, (features.result().numpy() if ok else None)


def _num_outputs(model: torch.nn.Module) -> int:
    head = _head(model)
    return head.out_features if head else 0


def recipe_for_root(
    recorded: dict[str, Any], root: Path, source: str, epochs: Optional[int] = None
) -> Recipe:
    """A recorded recipe reading the folder dataset at ``root`` with no val carved from train
    (the catalog's splits are the folder's); ``epochs``: train.epochs replaced."""
    data = dict(recorded)
    spec = dict(data["data"]["source"])
    if "root" not in spec:
        raise DataError(
            f"{source}: its dataset {spec.get('name')!r} is not read from a folder; "
            f"clfkit data check reads image folders (data.source: folder)"
        )
    spec["root"] = str(root)
    data["data"] = {**data["data"], "source": spec, "val_fraction": 0}
    if epochs is not None:
        data["train"] = {**data["train"], "epochs": epochs}
    return validate_recipe(data, source=source)


def catalog_rows(s: ImageSet, split: str, index: dict[tuple[str, str], int]) -> np.ndarray:
    """The catalog row of each image of split ``split`` (-1: not in the catalog)."""
    return np.array([index.get((split, f"{split}/{p}"), -1) for p in s.paths], dtype=np.int64)


def trained_digests(run_dir: Path) -> Optional[set[bytes]]:
    """Content hashes of the files under train/ when the run started (its data_files.json;
    None without one): images the run trained on (or validated on, when it carved val from
    train), whose probabilities are not out of sample."""
    try:
        files = json.loads(RunFolder(run_dir).data_files.read_text(encoding="utf-8"))["files"]
        return {
            str(entry[2]).encode()
            for name, entry in files.items()
            if name.startswith("train/") and len(entry) > 2
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def run_notes(run_dir: Path, state: dict[str, Any]) -> list[str]:
    """What to know of the run's probabilities: an unfinished run gives its last checkpoint's."""
    note = unfinished_note(run_dir, state)
    return [f"--run {escape_path(str(run_dir))}: {note}; its latest checkpoint was used"] if note else []


def run_outputs(
    run_dir: Path, root: Path, class_names: list[str], index: dict[tuple[str, str], int]
) -> tuple[dict[str, SplitOutputs], Recipe, list[str]]:
    """Per split, the outputs of ``run_dir``'s best model on the data at ``root``; the run's
    recipe pointed at ``root``; notes (:func:`run_notes`). A DataError when the run's classes
    are not the data's."""
    path, state = run_checkpoint(run_dir, None, "data check --run")
    recipe = recipe_for_root(state["recipe"], root, f"{path} recipe")
    if list(state["class_names"]) != list(class_names):
        raise DataError(
            f"the run {escape_path(str(run_dir))} was trained on classes {state['class_names']}, but "
            f"the data at {escape_path(str(root))} has {class_names}: its probabilities would be for other labels; "
            f"give a run trained on this data"
        )
    splits = build_data(recipe)
    if splits.in_chans != state["input"]["channels"]:
        raise DataError(
            f"the run {escape_path(str(run_dir))} takes {state['input']['channels']}-channel images, "
            f"but the data at {escape_path(str(root))} decodes to {splits.in_chans} channel(s) (data.channels: auto); give a run "
            f"trained on this data"
        )
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    model = model_from_checkpoint(state, path).to(rt.device)
    out = {}
    for split in ("train", "val", "test"):
        s = getattr(splits, split)
        if s is not None and len(s):
            probs, features = predict(model, s.images, rt)
            out[split] = SplitOutputs(catalog_rows(s, split, index), probs, features)
    return out, recipe, run_notes(run_dir, state)


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per image, each class spread evenly over the folds (seeded)."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def fold_probabilities(recipe: Recipe, folds: int, index: dict[tuple[str, str], int]) -> SplitOutputs:
    """Out-of-fold probabilities of the train split: ``folds`` models, each trained by the
    recipe on the other folds (in a temporary folder, deleted after) and read from its last.pt
    (not best.pt, which was picked on the held-out fold)."""
    splits = build_data(recipe)
    train_set, labels = splits.train, splits.train.labels.numpy()
    if folds < 2 or folds > np.bincount(labels).min():
        raise DataError(
            f"--folds {folds}: choose 2 to {np.bincount(labels).min()} (every class needs an "
            f"image in every fold; the smallest train class has {np.bincount(labels).min()})"
        )
    fold = fold_assignment(labels, folds, recipe.seed)
    probs = np.zeros((len(labels), len(splits.class_names)), np.float32)
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    with tempfile.TemporaryDirectory(prefix="clfkit-folds-") as tmp:
        for k in range(folds):
            held, keep = (
                torch.from_numpy(np.flatnonzero(fold == k)),
                torch.from_numpy(np.flatnonzero(fold != k)),
            )
            part = Splits(
                train=train_set.subset(keep),
                class_names=splits.class_names,
                val=train_set.subset(held),
                description=f"fold {k + 1}/{folds}",
            )
            result = train(recipe, Path(tmp) / f"fold{k}", quiet=True, splits=part)
            model = model_from_checkpoint(load_checkpoint(RunFolder(result.run_dir).last)).to(rt.device)
            probs[held.numpy()] = predict(model, part.val.images, rt)[0]
    return SplitOutputs(catalog_rows(train_set, "train", index), probs, None)
