"""A run's record of the data it trains on, and the check that a resumed run reads the same.

Every checkpoint holds ``data``: ``{"fingerprint": ..., "changes_allowed": [...]}``. The
fingerprint is :attr:`clfkit.data.Splits.fingerprint`, the hash the decode cache keys by (every
file's relative path, label and content hash), so an edit in place that keeps the name, size
and modification time changes it too. A generated dataset (``shapes``, ...) has none: the
recipe in last.pt (data.source, seed) is what identifies it, and nothing more is recorded.

A folder dataset also gets ``data_files.json`` in the run folder: every file's size,
modification time and content hash at the run's start (relative names: a copy elsewhere
matches). It lets a refusal say how many files were added, removed or changed, and ``clfkit
eval --data-root`` say whether another folder holds the run's data.

Why refuse: a resumed run keeps its epoch order and its val hold-out by index, so on other
files the remaining epochs train on other images, val may hold images trained on, and the
val/test numbers no longer compare with the epochs before. ``--allow-data-change`` continues
anyway; each such resume is kept in ``changes_allowed`` (checkpoints and summary.json).
"""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from clfkit import registry
from clfkit.data import Splits
from clfkit.data.class_folders import read_and_hash, relative_names, scan_folder
from clfkit.errors import DataChangedError, DataError, DataRecordWarning
from clfkit.run.run_folder import RunFolder


def data_record(splits: Splits, previous: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoints' ``data`` entry for ``splits``, carrying ``previous``'s allowed changes."""
    return {
        "fingerprint": splits.fingerprint,
        "changes_allowed": list((previous or {}).get("changes_allowed") or []),
    }


def where(source: Any) -> str:
    """The data a recipe's data.source reads, for messages: a folder root, else the dataset."""
    name, args = registry.split_spec(source)
    return str(args["root"]) if "root" in args else f"dataset {name!r}"


FILES_PER_TASK = 256


def file_manifest(source: Any) -> Optional[dict[str, list]]:
    """{path relative to the root: [size, modification time in ns, content hash]} of every
    file a folder dataset reads (the hash of clfkit.data.class_folders.read_and_hash, the one the
    fingerprint is made of); None for other datasets or a folder that cannot be read. Relative
    names and content only: an identical copy of the data elsewhere gives the same hashes."""
    name, args = registry.split_spec(source)
    if name != "folder" or "root" not in args:
        return None
    try:
        plan = scan_folder(args["root"])
    except (DataError, OSError):
        return None
    paths = [
        (path, name)
        for paths, _ in plan.splits.values()
        for path, name in zip(paths, relative_names(paths, plan.root))
    ]
    # reads and hashing release the GIL. Tasks of FILES_PER_TASK files: a future per file (175k
    # of them, all submitted at once by map) held ~300 MB of a 175k-image run's peak RSS
    chunks = [paths[i : i + FILES_PER_TASK] for i in range(0, len(paths), FILES_PER_TASK)]
    with ThreadPoolExecutor(min(32, 2 * (os.cpu_count() or 1))) as pool:
        return {name: entry for done in pool.map(_file_entries, chunks) for name, entry in done}


def _file_entries(items: list[tuple[str, str]]) -> list[tuple[str, list]]:
    return [(name, _file_entry(path)) for path, name in items]


def _file_entry(path: str) -> list:
    try:
        st = os.stat(path)  # through links, as the loader reads them
    except OSError:
        return [-1, -1, "unreadable"]
    return [st.st_size, st.st_mtime_ns, read_and_hash(Path(path))[1]]


def write_manifest(folder: RunFolder, source: Any) -> None:
    """data_files.json for a folder dataset (nothing for others)."""
    files = file_manifest(source)
    if files is not None:
        folder.write_data_files({"root": where(source), "files": files})


def _recorded_files(run_dir: Path) -> Optional[dict[str, list]]:
    try:
        old = json.loads(RunFolder(run_dir).data_files.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return old if isinstance(old, dict) else None


def manifest_changes(old: dict[str, list], new: dict[str, list]) -> dict[str, int]:
    """Files added, removed and changed from ``old`` to ``new`` (manifests of file_manifest):
    changed by content hash, or by size and time against a record without hashes (older runs)."""

    def differs(a: list, b: list) -> bool:
        return a[2] != b[2] if len(a) > 2 and len(b) > 2 else list(a[:2]) != list(b[:2])

    return {
        "added": len(new.keys() - old.keys()),
        "removed": len(old.keys() - new.keys()),
        "changed": sum(differs(list(old[k]), list(new[k])) for k in old.keys() & new.keys()),
    }


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} file(s) {what}" for what, n in counts.items() if n)


def describe_changes(run_dir: Path, source: Any) -> str:
    """How the files differ from the run's data_files.json: counts added, removed, changed
    (content; size or time for an older record); "" when that cannot be said."""
    old, new = _recorded_files(run_dir), file_manifest(source)
    if old is None or new is None:
        return ""
    return (
        _counts_text(manifest_changes(old, new))
        or "the contents of files changed, their names, sizes and times did not"
    )


def check_unchanged(
    run_dir: Path, recorded: Optional[dict[str, Any]], splits: Splits, source: Any, allow: bool, epoch: int
) -> tuple[dict[str, Any], Optional[str]]:
    """(the data record the resumed run goes on with, a line for its log or None). Data other
    than the run's is a DataChangedError, unless ``allow`` (--allow-data-change): then the
    change is kept in the record. A last.pt without a record (older clfkit): one warning."""
    now = splits.fingerprint
    if not isinstance(recorded, dict) or recorded.get("fingerprint") is None:
        if now is not None:  # a run from before the record, or from a dataset that had no fingerprint
            warnings.warn(
                f"{run_dir}'s last.pt does not record which data it trained on (an older clfkit): "
                f"cannot check that the data at {where(source)} is unchanged since the run started; "
                f"it is recorded from now on",
                DataRecordWarning,
                stacklevel=2,
            )
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
            f"was changed"
        )
    record = data_record(splits, recorded)
    record["changes_allowed"].append(
        {"after_epoch": epoch, "was": recorded.get("fingerprint"), "now": now, "detail": detail}
    )
    return record, f"warning: {what}; continuing on it from epoch {epoch + 1} (--allow-data-change)"


def compare_eval_data(
    state: dict[str, Any], splits: Splits, source: Any, data_root: Any, run_dir: Optional[Path] = None
) -> tuple[Optional[bool], str]:
    """(whether the data ``clfkit eval`` read differs from the data the run trained on, a line
    saying so). Files are compared by relative name and content with the run's data_files.json
    (an identical copy under ``--data-root`` is the same data; a larger set is not); without
    one, by the fingerprint. None: the run records nothing to compare with (generated data, an
    older run). A difference is also a warning: the numbers are on other images."""
    recorded = state.get("data")
    fingerprint = recorded.get("fingerprint") if isinstance(recorded, dict) else None
    if fingerprint is None or splits.fingerprint is None:
        return None, "the run records no data to compare with (generated data, or an older run)"
    old = _recorded_files(run_dir) if run_dir is not None else None
    hashed = old is not None and all(len(v) > 2 for v in old.values())
    new = file_manifest(source) if hashed else None
    if hashed and new is not None:
        counts = manifest_changes(old, new)
        changed, detail = any(counts.values()), _counts_text(counts)
        same = f"same data as the run trained on ({len(new)} files, names and contents)"
    elif data_root is None or fingerprint == splits.fingerprint:
        changed = fingerprint != splits.fingerprint
        detail = describe_changes(run_dir, source) if changed and run_dir is not None else ""
        same = "same data as the run trained on (fingerprint)"
    else:  # another folder, and a record without content hashes: files cannot be matched
        return None, (
            f"cannot say whether --data-root {data_root} holds the run's data: its data_files.json "
            f"records no content hashes (an older clfkit)"
        )
    if not changed:
        return False, same
    what = (
        f"the data at {where(source)} changed since this run trained on it"
        if data_root is None
        else f"--data-root {data_root} holds other data than this run trained on"
    )
    text = what + (f" ({detail})" if detail else "")
    warnings.warn(
        f"{text}: these numbers are on other images than its summary.json's, and val (held out of "
        f"train by seed) may now hold images it trained on",
        DataRecordWarning,
        stacklevel=2,
    )
    return True, "changed: " + text


def eval_data_changed(
    state: dict[str, Any], splits: Splits, source: Any, data_root: Any, run_dir: Optional[Path] = None
) -> Optional[bool]:
    """:func:`compare_eval_data`'s verdict alone."""
    return compare_eval_data(state, splits, source, data_root, run_dir)[0]


def recipe_on_data(
    recorded: dict[str, Any], data_root: Optional[str | Path], source: str, purpose: str
) -> Any:
    """The checkpoint's recipe with its folder dataset's root replaced by ``data_root`` (``--data-root``
    of eval and export) when given. A DataError naming the option when the folder it would read
    is not there (the run's data moved), or when the dataset is not read from a folder."""
    from clfkit.recipe import validate_recipe

    data = dict(recorded)
    name, args = registry.split_spec(data["data"]["source"])
    if data_root is not None:
        if "root" not in args:
            raise DataError(
                f"--data-root: this run's dataset {name!r} is not read from a folder "
                f"(it has no root to replace)"
            )
        args = {**args, "root": str(data_root)}
        data["data"] = {**data["data"], "source": {"name": name, **args}}
    root = args.get("root")
    if root is not None and not Path(root).is_dir():
        what = f"--data-root {root}" if data_root is not None else f"the run's data folder {root}"
        state = "is a file, not a folder" if Path(root).exists() else "does not exist"
        raise DataError(
            f"{purpose} reads the run's {name} dataset, but {what} {state}. If the data moved, "
            f"give its new place with --data-root PATH (the folder holding train/)"
        )
    return validate_recipe(data, source=source)
