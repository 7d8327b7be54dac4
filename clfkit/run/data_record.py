"""A run's record of the data it trains on, and the check that a resumed run reads the same.

Every checkpoint holds ``data``: ``{"fingerprint": ..., "changes_allowed": [...]}``. The
fingerprint is :attr:`clfkit.data.Splits.fingerprint`, the hash the decode cache keys by (every
file's relative path, label and content hash), so an edit in place that keeps the name, size
and modification time changes it too. A generated dataset (``shapes``, ...) has none: the
recipe in last.pt (data.source, seed) is what identifies it, and nothing more is recorded.

A folder dataset also gets ``data_files.json`` in the run folder: every file's size and
modification time at the run's start. It is never the check (the fingerprint is); it lets a
refusal say how many files were added, removed or changed.

Why refuse: a resumed run keeps its epoch order and its val hold-out by index, so on other
files the remaining epochs train on other images, val may hold images trained on, and the
val/test numbers no longer compare with the epochs before. ``--allow-data-change`` continues
anyway; each such resume is kept in ``changes_allowed`` (checkpoints and summary.json).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

from clfkit import registry
from clfkit.data import Splits
from clfkit.data.folder import relative_names, scan_folder
from clfkit.errors import ClfkitError, DataError
from clfkit.run.folder import RunFolder


class DataChangedError(ClfkitError):
    """A run resumed on data other than the data it started on."""


class DataRecordWarning(UserWarning):
    """Data that cannot be checked (an old run), or an evaluation on changed data."""


def data_record(splits: Splits, previous: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoints' ``data`` entry for ``splits``, carrying ``previous``'s allowed changes."""
    return {"fingerprint": splits.fingerprint,
            "changes_allowed": list((previous or {}).get("changes_allowed") or [])}


def where(source: Any) -> str:
    """The data a recipe's data.source reads, for messages: a folder root, else the dataset."""
    name, args = registry.split_spec(source)
    return str(args["root"]) if "root" in args else f"dataset {name!r}"


def file_manifest(source: Any) -> Optional[dict[str, list[int]]]:
    """{path relative to the root: [size, modification time in ns]} of every file a folder
    dataset reads (no file is opened); None for other datasets or a folder that cannot be read."""
    name, args = registry.split_spec(source)
    if name != "folder" or "root" not in args:
        return None
    try:
        plan = scan_folder(args["root"])
    except (DataError, OSError):
        return None
    files = {}
    for paths, _ in plan.splits.values():
        for path, name in zip(paths, relative_names(paths, plan.root)):
            try:
                st = os.stat(path)  # through links, as the loader reads them
                files[name] = [st.st_size, st.st_mtime_ns]
            except OSError:
                files[name] = [-1, -1]
    return files


def write_manifest(folder: RunFolder, source: Any) -> None:
    """data_files.json for a folder dataset (nothing for others)."""
    files = file_manifest(source)
    if files is not None:
        folder.write_data_files({"root": where(source), "files": files})


def describe_changes(run_dir: Path, source: Any) -> str:
    """How the files differ from the run's data_files.json: counts added, removed, changed
    (size or modification time); "" when that cannot be said."""
    try:
        old = json.loads(RunFolder(run_dir).data_files.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    new = file_manifest(source)
    if not isinstance(old, dict) or new is None:
        return ""
    counts = {"added": len(new.keys() - old.keys()), "removed": len(old.keys() - new.keys()),
              "changed": sum(list(old[k]) != new[k] for k in old.keys() & new.keys())}
    parts = [f"{n} file(s) {what}" for what, n in counts.items() if n]
    return ", ".join(parts) if parts else "the contents of files changed, their names, sizes and times did not"


def check_unchanged(run_dir: Path, recorded: Optional[dict[str, Any]], splits: Splits, source: Any,
                    allow: bool, epoch: int) -> tuple[dict[str, Any], Optional[str]]:
    """(the data record the resumed run goes on with, a line for its log or None). Data other
    than the run's is a DataChangedError, unless ``allow`` (--allow-data-change): then the
    change is kept in the record. A last.pt without a record (older clfkit): one warning."""
    now = splits.fingerprint
    if not isinstance(recorded, dict) or recorded.get("fingerprint") is None:
        if now is not None:  # a run from before the record, or from a dataset that had no fingerprint
            warnings.warn(f"{run_dir}'s last.pt does not record which data it trained on (an older clfkit): "
                          f"cannot check that the data at {where(source)} is unchanged since the run started; "
                          f"it is recorded from now on", DataRecordWarning, stacklevel=2)
        return data_record(splits, recorded if isinstance(recorded, dict) else None), None
    if recorded["fingerprint"] == now:
        return data_record(splits, recorded), None
    detail = describe_changes(run_dir, source)
    what = f"the data at {where(source)} changed since the run started" + (f" ({detail})" if detail else "")
    if not allow:
        raise DataChangedError(
            f"cannot resume {run_dir}: {what}. The remaining epochs would train on other images in the old "
            f"order, and the val/test numbers would not compare with the earlier epochs'. Restore the data as "
            f"it was, or start a new run (clfkit train {RunFolder(run_dir).recipe}); to continue on the changed "
            f"data anyway: clfkit train --resume {run_dir} --allow-data-change. Nothing in the run folder "
            f"was changed")
    record = data_record(splits, recorded)
    record["changes_allowed"].append({"after_epoch": epoch, "was": recorded.get("fingerprint"), "now": now,
                                      "detail": detail})
    return record, f"warning: {what}; continuing on it from epoch {epoch + 1} (--allow-data-change)"


def eval_data_changed(state: dict[str, Any], splits: Splits, source: Any, data_root: Any) -> Optional[bool]:
    """Whether the data ``clfkit eval`` read differs from the data the checkpoint was trained
    on (None: the checkpoint records none, or the data has no fingerprint). A change of the
    run's own data (not ``--data-root``) is warned about: the numbers are on other images."""
    recorded = state.get("data")
    if not isinstance(recorded, dict) or recorded.get("fingerprint") is None or splits.fingerprint is None:
        return None
    changed = recorded["fingerprint"] != splits.fingerprint
    if changed and data_root is None:
        warnings.warn(f"the data at {where(source)} changed since this run trained on it: these numbers are "
                      f"on other images than its summary.json's, and val (held out of train by seed) may now "
                      f"hold images it trained on", DataRecordWarning, stacklevel=2)
    return changed


def recipe_on_data(recorded: dict[str, Any], data_root: Optional[str | Path], source: str, purpose: str) -> Any:
    """The checkpoint's recipe with its folder dataset's root replaced by ``data_root`` (``--data-root``
    of eval and export) when given. A DataError naming the option when the folder it would read
    is not there (the run's data moved), or when the dataset is not read from a folder."""
    from clfkit.recipe import validate_recipe

    data = dict(recorded)
    name, args = registry.split_spec(data["data"]["source"])
    if data_root is not None:
        if "root" not in args:
            raise DataError(f"--data-root: this run's dataset {name!r} is not read from a folder "
                            f"(it has no root to replace)")
        args = {**args, "root": str(data_root)}
        data["data"] = {**data["data"], "source": {"name": name, **args}}
    root = args.get("root")
    if root is not None and not Path(root).is_dir():
        what = f"--data-root {root}" if data_root is not None else f"the run's data folder {root}"
        state = "is a file, not a folder" if Path(root).exists() else "does not exist"
        raise DataError(f"{purpose} reads the run's {name} dataset, but {what} {state}. If the data moved, "
                        f"give its new place with --data-root PATH (the folder holding train/)")
    return validate_recipe(data, source=source)
