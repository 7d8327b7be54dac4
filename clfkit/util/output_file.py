"""Where a command may write the file an ``-o`` names (``clfkit predict``, ``clfkit compare``):
never over a file of a run folder, never over an existing file of another kind.

A write goes through a symbolic link to its target (clfkit.util.atomic), so every check is made on
the resolved path: ``-o link.txt`` whose target is a run's best.pt is a write to best.pt. A leaf
module (no torch, nothing of the training side): predict uses it on a deployment machine.
"""

from __future__ import annotations

import os
from pathlib import Path

# the files a run folder has once the trainer wrote into it (clfkit.run.run_folder.RunFolder.is_run)
RUN_FOLDER_MARKERS = ("metrics.jsonl", "summary.json")


def is_run_folder(folder: str | os.PathLike) -> bool:
    """A folder the trainer has written into (at least one epoch, or a summary)."""
    return any((Path(folder) / name).is_file() for name in RUN_FOLDER_MARKERS)


def run_folder_holding(path: str | os.PathLike) -> Path | None:
    """The run folder that ``path`` (links resolved) lies in, or None."""
    return next((p for p in Path(path).resolve().parents if is_run_folder(p)), None)


def _via(out: Path) -> str:
    """' (a link to TARGET)' when ``out`` is a symbolic link, else ''."""
    return f" (a link to {out.resolve()})" if out.is_symlink() else ""


def run_file_refusal(out: str | os.PathLike) -> str | None:
    """Why ``out`` (links resolved) may not be written: it is an existing file of a run
    folder (best.pt, summary.json, ...); None otherwise."""
    out = Path(out)
    owner = run_folder_holding(out) if out.resolve().is_file() else None
    return (
        None
        if owner is None
        else f"is a file of the run folder {owner}{_via(out)}; writing there would overwrite it"
    )


def overwrite_refusal(out: str | os.PathLike, replaceable: tuple[str, ...], kind: str) -> str | None:
    """Why writing ``out`` would lose a file, or None when it may be written: its target (links
    resolved) is an existing file of a run folder, or an existing file whose suffix is not in
    ``replaceable`` (the suffixes of an earlier ``kind`` file, "" for none)."""
    out = Path(out)
    target = out.resolve()
    if not target.is_file():
        return None
    why = run_file_refusal(out)
    if why is not None:
        return why
    if target.suffix.lower() not in replaceable:
        allowed = "/".join(s for s in replaceable if s) + (" or suffix-less" if "" in replaceable else "")
        return (
            f"exists{_via(out)} and is not a {allowed} file (it is {target.name!r}); only an earlier "
            f"{kind} is replaced"
        )
    return None
