"""``clfkit data check``: every finding about a folder dataset, with or without a model.

Steps: the catalog (files, labels, records: clfkit.data.audit.catalog) -> exact duplicates,
leaks and conflicts (pixel hashes) -> near-duplicates across splits (perceptual hashes) ->
image quality -> with ``run``: the run's model on every split (label errors on val/test,
feature neighbours) -> with ``folds``: out-of-fold probabilities for train (label errors) ->
data_check.json, data_check.html, and with ``fix_split`` leaked_files.csv. The data folder is
only read.
"""

from __future__ import annotations

import os
import time
from collections import Counter
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from clfkit.data import image_files
from clfkit.data.audit.catalog import load_catalog
from clfkit.data.audit.findings import (
    FEATURE_SIMILARITY,
    KINDS,
    PHASH_DISTANCE,
    Catalog,
    Finding,
    exact_findings,
    near_duplicate_findings,
    overview,
    quality_findings,
    sort_findings,
)
from clfkit.data.cache import cache_dir
from clfkit.errors import ClfkitError, DataError
from clfkit.recipe import Recipe, load_recipe


MEANING = {
    "conflict": "same pixels under two classes: one label is wrong",
    "leak": "same pixels in two splits: evaluation partly on training images",
    "exact_duplicate": "same pixels twice in one split: counted and weighted twice",
    "near_duplicate": "re-encoded, resized or cropped copy in another split (perceptual hash)",
    "feature_neighbour": "another split's image the model sees as (nearly) the same",
    "label_issue": "the model, out of sample, is confident of another class (cleanlab)",
    "dark": "too dark (CleanVision)",
    "light": "washed out (CleanVision)",
    "blurry": "few edges (CleanVision)",
    "low_information": "little entropy: blank or flat (CleanVision)",
    "odd_aspect_ratio": "one side under 0.35x the other (CleanVision)",
}


@dataclass
class DataCheck:
    """What ``clfkit data check`` found, and the files it wrote."""

    root: Path
    catalog: Catalog
    findings: list[Finding]
    overview: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def shown_root(self) -> str:
        """The data root as messages and pages print it (any file name, escaped)."""
        return image_files.escape_path(str(self.root))

    def count(self, kind: str) -> int:
        return sum(1 for f in self.findings if f.kind == kind)


def resolve_target(target: Path, overrides: tuple[str, ...] = ()) -> tuple[Path, Optional[Recipe]]:
    """(data root, recipe or None) of a RECIPE file or a data root folder."""
    if target.is_dir():
        if overrides:
            raise ClfkitError("--set changes a recipe: give a RECIPE file, not a data folder")
        return target, None
    if not target.exists():
        raise DataError(
            f"{image_files.escape_path(str(target))} does not exist: give a recipe file or a data "
            f"folder (<root>/train/<class>/...)"
        )
    try:
        recipe = load_recipe(target, overrides)
    except ClfkitError as e:
        if target.suffix.lower() in (".yaml", ".yml"):
            raise
        first = str(e).splitlines()[-1].strip()  # the recipe loader's reason, for a file that may be neither
        raise DataError(
            f"{image_files.escape_path(str(target))} is a file, neither a data folder "
            f"(<root>/train/<class>/...) nor a recipe ({first})"
        ) from None
    spec = recipe.data.source
    if spec.get("name") != "folder" or "root" not in spec:
        raise DataError(
            f"{image_files.escape_path(str(target))}: data.source is {spec.get('name')!r}; clfkit data check reads image folders "
            f"(data.source: {{name: folder, root: ...}})"
            + (
                "; for shards, check the folder they were packed from (manifest.json's source names it): "
                "a run checks only the first images of a streamed split"
                if spec.get("name") == "webdataset"
                else ""
            )
        )
    return Path(spec["root"]).expanduser(), recipe


def _check_out(out: Path, root: Path) -> None:
    """The report never goes into the data folder: the data is only read."""
    if image_files.contains(os.path.realpath(root), os.path.realpath(out)):
        raise ClfkitError(
            f"--out {image_files.escape_path(str(out))} is inside the data folder "
            f"{image_files.escape_path(str(root))}; clfkit data check never writes "
            f"there: choose a folder outside it"
        )
    if out.exists() and not out.is_dir():
        raise ClfkitError(
            f"--out {image_files.escape_path(str(out))} is a file; give a folder (it receives data_check.json and data_check.html)"
        )


def _pixel_findings(catalog: Catalog, phash_distance: int) -> list[Finding]:
    rows = np.flatnonzero(catalog.readable)
    found = exact_findings(
        catalog.split, catalog.label, catalog.records["pixels"][rows], rows, catalog.class_names
    )
    return found + near_duplicate_findings(catalog, phash_distance) + quality_findings(catalog)


def _empty_split_notes(catalog: Catalog, root: Path) -> list[str]:
    """A split folder without images, or whose every file failed to decode: said, not skipped silently."""
    notes = [
        f"{s}/ holds no images; not checked"
        for s in ("val", "test")
        if (root / s).is_dir() and s not in catalog.splits()
    ]
    notes += [
        f"{s}: none of its {sum(1 for x in catalog.split if x == s)} file(s) could be decoded; not checked"
        for s in catalog.splits()
        if not len(catalog.rows_of(s))
    ]
    return notes + _unreadable_class_notes(catalog)


def _unreadable_class_notes(catalog: Catalog) -> list[str]:
    """A class folder whose every file failed to decode: training refuses such data, so it is
    said here too (its files are listed as skipped, and it counts 0 images)."""
    files, readable = Counter(), Counter()
    for i, (s, y) in enumerate(zip(catalog.split, catalog.label.tolist())):
        if y >= 0:
            files[s, y] += 1
            readable[s, y] += bool(catalog.readable[i])
    return [
        f"{s}/{image_files.escape_path(catalog.class_names[y])}: none of its {n} file(s) could be decoded "
        f"(clfkit train refuses a class without readable images)"
        for (s, y), n in files.items()
        if not readable[s, y] and len(catalog.rows_of(s))
    ]


def _unseen(catalog: Catalog, outputs: Any, seen: Optional[set[bytes]], split: str, notes: list[str]) -> Any:
    """``outputs`` without the images the run trained on (by content: ``seen``): their
    probabilities are not out of sample, so they are said, not ranked as label errors."""
    if not seen:
        return outputs
    trained = np.array(
        [catalog.records["digest"][r] in seen if r >= 0 else False for r in outputs.rows], bool
    )
    if trained.any():
        notes.append(
            f"{split}: {int(trained.sum())} image(s) are files the run had under train/ (same bytes): "
            f"left out of its label errors (its probabilities there are not out of sample)"
        )
    keep = ~trained
    return type(outputs)(
        outputs.rows[keep], outputs.probs[keep], None if outputs.features is None else outputs.features[keep]
    )


def _model_findings(
    check: DataCheck,
    run: Optional[Path],
    recipe: Optional[Recipe],
    folds: int,
    fold_epochs: Optional[int],
    feature_similarity: float,
) -> None:
    # torch and the trainer load only for a check that needs a model (2 s of a 60k-image check)
    from clfkit.audit.model_findings import feature_neighbour_findings, label_findings
    from clfkit.audit.model_outputs import fold_probabilities, recipe_for_root, run_outputs, trained_digests

    catalog = check.catalog
    index = {(s, p): i for i, (s, p) in enumerate(zip(catalog.split, catalog.path)) if catalog.readable[i]}
    if run is not None:
        t0 = time.perf_counter()
        outputs, run_recipe, notes = run_outputs(run, check.root, catalog.class_names, index)
        check.notes += notes
        recipe = recipe or run_recipe
        seen = trained_digests(run)
        for split in ("val", "test"):
            if split in outputs:
                found, note = label_findings(
                    catalog,
                    _unseen(catalog, outputs[split], seen, split, check.notes),
                    split,
                    f"run {run.name}",
                )
                check.findings += found
                check.notes += [note] if note else []
        already = {frozenset(f.rows) for f in check.findings if f.kind in ("leak", "near_duplicate")}
        check.findings += feature_neighbour_findings(catalog, outputs, already, feature_similarity)
        check.seconds["run"] = round(time.perf_counter() - t0, 2)
    if folds:
        if recipe is None:
            raise ClfkitError(
                "--folds trains models: give a RECIPE (not a data folder), or --run RUN to "
                "train as that run did"
            )
        t0 = time.perf_counter()
        recipe = recipe_for_root(recipe.to_dict(), check.root, "--folds recipe", fold_epochs)
        with warnings.catch_warnings():  # each fold's train-time data check repeats this one
            warnings.simplefilter("ignore")
            train_out = fold_probabilities(recipe, folds, index)
        found, note = label_findings(catalog, train_out, "train", f"{folds}-fold cross-validation")
        check.findings += found
        check.notes += [note] if note else []
        check.seconds["folds"] = round(time.perf_counter() - t0, 2)


def check_data(
    target: str | Path,
    *,
    run: Optional[str | Path] = None,
    folds: int = 0,
    fold_epochs: Optional[int] = None,
    overrides: tuple[str, ...] = (),
    out: Optional[Path] = None,
    phash_distance: int = PHASH_DISTANCE,
    feature_similarity: float = FEATURE_SIMILARITY,
) -> DataCheck:
    """Check the folder dataset of ``target`` (a recipe file or a data root). ``run``: a run
    folder whose model gives label errors on val/test and feature neighbours; ``folds``:
    cross-validated training (the recipe's, ``fold_epochs`` epochs) for label errors in train.
    ``out``: where the report will go, refused inside the data folder before anything is read."""
    root, recipe = resolve_target(Path(target), overrides)
    if out is not None:
        _check_out(Path(out), root)
    catalog, stats = load_catalog(root, cache_dir())
    check = DataCheck(
        root,
        catalog,
        [],
        {},
        settings={
            "phash_distance": phash_distance,
            "feature_similarity": feature_similarity,
            "run": str(run) if run else None,
            "folds": folds,
        },
    )
    check.seconds["catalog"] = stats["seconds"]
    check.settings.update(decoded=stats["decoded"], from_cache=stats["cached"])
    check.notes += [stats["cache_note"]] if stats["cache_note"] else []
    check.notes += _empty_split_notes(catalog, root)
    t0 = time.perf_counter()
    check.findings = _pixel_findings(catalog, phash_distance)
    check.seconds["pixel_checks"] = round(time.perf_counter() - t0, 3)
    _model_findings(check, Path(run) if run else None, recipe, folds, fold_epochs, feature_similarity)
    check.findings = sort_findings(check.findings)
    check.overview = overview(catalog)
    return check


def leaked_files(check: DataCheck) -> list[dict[str, str]]:
    """The val/test side of every leak and near-duplicate (feature neighbours too): the files
    to drop so no evaluation image has a copy in an earlier split."""
    out, seen = [], set()
    for f in check.findings:
        if f.kind not in ("leak", "near_duplicate", "feature_neighbour"):
            continue
        first = check.catalog.file(f.rows[0])
        for r in f.rows[1:]:
            entry = check.catalog.file(r)
            if entry["split"] != first["split"] and r not in seen:
                seen.add(r)
                out.append(
                    {
                        "split": entry["split"],
                        "path": entry["path"],
                        "finding": f.kind,
                        "copy_of": f"{first['path']}",
                        "score": f"{f.score:.4f}",
                    }
                )
    return out


def summary_rows(check: DataCheck) -> list[dict[str, Any]]:
    """One row per kind of finding: count, files involved, the most certain example."""
    rows = []
    for kind in KINDS:
        found = [f for f in check.findings if f.kind == kind]
        files = len({r for f in found for r in f.rows})
        example = " = ".join(check.catalog.file(r)["path"] for r in found[0].rows[:2]) if found else ""
        rows.append(
            {
                "finding": kind,
                "count": len(found),
                "files": files,
                "most certain": example,
                "meaning": MEANING[kind],
            }
        )
    return rows
