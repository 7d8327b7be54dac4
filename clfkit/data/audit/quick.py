"""The cheap data checks at the start of every ``train``: one summary line, one warning per
kind of finding.

They run on the decoded uint8 tensors the run trains on (after the val split is carved from
train), so they cost one hash per image and no decode: ~0.1 s per 60,000 small images. Two
files are the same here when the model would see the same pixels (after the recipe's resize):
a PNG and a BMP of one picture, or one photo under two names. Near-duplicates, label errors
and image quality need ``clfkit data check``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Optional

import numpy as np

from clfkit.data.audit.findings import Finding, class_counts, exact_findings, imbalance_note
from clfkit.data.streamed import is_streamed
from clfkit.errors import DataCheckWarning  # noqa: F401 - defined in errors.py, importable from here too

BLOCK_ROWS = 4096  # rows read at a time: a disk split is never loaded whole


def row_hashes(images: Any) -> np.ndarray:
    """A 16-byte hash of each image's pixels (uint8 tensors or a disk split, in blocks)."""
    out = []
    for i in range(0, len(images), BLOCK_ROWS):
        block = np.ascontiguousarray(images[i : i + BLOCK_ROWS].numpy()).reshape(
            min(BLOCK_ROWS, len(images) - i), -1
        )
        out += [hashlib.blake2b(row, digest_size=16).digest() for row in block]
    return np.array(out, dtype="S16")


def _rows(s: Any) -> tuple[Any, np.ndarray, list[str]]:
    """(images, labels (-1: none), paths) of the rows of split ``s`` the check reads: a streamed
    split's head (its first images, clfkit.data.streamed), every row of any other split."""
    if is_streamed(s):
        return s.images, s.head_labels.numpy(), [_short(p) for p in s.head_paths]
    labels = s.labels.numpy() if s.labels is not None else np.full(len(s), -1)
    paths = [_short(p) for p in s.paths] if s.paths is not None else [f"#{i}" for i in range(len(s))]
    return s.images, labels, paths


_SHARD_SAMPLE = re.compile(r"(?:.*/)?([^/?]*?\.(?:tar|tgz|tar\.gz))(?:\?[^#/]*)?(#.*)")


def _short(path: str) -> str:
    """A shard sample (``/dir/train-000003.tar#key``, a URL's query too) as
    ``train-000003.tar#key``; a file unchanged. Folders and keys may hold '#': the shard is the
    first name ending in .tar, .tgz or .tar.gz before one."""
    m = _SHARD_SAMPLE.match(path)
    return path if m is None else m.group(1) + m.group(2)


def split_findings(splits: Any) -> tuple[list[Finding], list[str], list[str], np.ndarray]:
    """(exact findings, the split, path and label (-1: none) of each row) over the splits' images."""
    names, keys, labels, paths = [], [], [], []
    for name in ("train", "val", "test"):
        s = getattr(splits, name)
        if s is None or len(s) == 0:
            continue
        images, split_labels, split_paths = _rows(s)
        names += [name] * len(images)
        keys.append(row_hashes(images))
        labels.append(split_labels)
        paths += split_paths
    label = np.concatenate(labels)
    found = exact_findings(names, label, np.concatenate(keys), np.arange(len(names)), splits.class_names)
    return found, names, paths, label


def _example(
    f: Finding, names: list[str], paths: list[str], label: np.ndarray, class_names: list[str]
) -> str:
    """Up to three files of the group, one of each split (and class) first, so that the example
    shows what the finding is: a leak's train and test file, a conflict's two classes."""
    seen: set[tuple[str, int]] = set()
    first, rest = [], []
    for r in f.rows:
        (rest if (names[r], int(label[r])) in seen else first).append(r)
        seen.add((names[r], int(label[r])))
    shown = (first + rest)[:3]

    def where(r: int) -> str:
        # "in val", not "val/...": a val split carved from train has no folder of its own
        c = int(label[r])
        cls = f" as {class_names[c]!r}" if f.kind == "conflict" and 0 <= c < len(class_names) else ""
        return f"{paths[r]} in {names[r]}{cls}"

    return " = ".join(where(r) for r in shown) + (" = ..." if len(f.rows) > 3 else "")


WHY = {
    "conflict": "the same image under two classes: one label is wrong",
    "leak": "the same image in two splits: val/test figures are measured partly on training images",
    "exact_duplicate": "the same image twice in one split: it counts (and trains) twice",
}


def warning_lines(
    found: list[Finding], names: list[str], paths: list[str], label: np.ndarray, class_names: list[str]
) -> list[str]:
    """One line per kind of finding, with its first example."""
    lines = []
    for kind, why in WHY.items():
        of_kind = [f for f in found if f.kind == kind]
        if of_kind:
            files = sum(len(f.rows) for f in of_kind)
            lines.append(
                f"{len(of_kind)} {kind.replace('_', ' ')} group(s), {files} files ({why}), "
                f"e.g. {_example(of_kind[0], names, paths, label, class_names)}"
            )
    return lines


def quick_check(splits: Any, warn: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """Run the cheap checks on decoded ``splits`` (clfkit.data.Splits); each kind of finding
    goes to ``warn`` as one line. Returns the summary line and the counts (for summary.json)."""
    found, names, paths, label = split_findings(splits)
    for line in warning_lines(found, names, paths, label, splits.class_names):
        warn(line)
    counts = {kind: sum(1 for f in found if f.kind == kind) for kind in WHY}
    per_class = class_counts(names, label, splits.class_names)
    train, scope = splits.train, ""
    if train is not None and is_streamed(train):
        if not train.head_complete:
            scope = f" (train: the first {len(train.images)} of {len(train)} streamed images)"
        if train.class_counts() is not None:  # the whole split, from the shards' manifest
            per_class["train"] = dict(zip(splits.class_names, train.class_counts()))
    imbalance: Optional[str] = imbalance_note(per_class["train"]) if "train" in per_class else None
    if imbalance:
        streamed = train is not None and is_streamed(train)  # no index to draw by
        remedy = "loss.class_weights" + ("" if streamed else " or data.sampler: balanced")
        warn(f"class imbalance in train: {imbalance} ({remedy} can help)")
    train_counts = per_class.get("train", {})
    parts = [f"{counts[k]} {k.replace('_', ' ')}(s)" for k in WHY if counts[k]]
    line = (
        f"data check: {len(names)} images{scope}, train classes {min(train_counts.values(), default=0)}-"
        f"{max(train_counts.values(), default=0)} images; "
        + (", ".join(parts) if parts else "no exact duplicates, leaks or conflicts")
        + (f"; {len(splits.skipped)} file(s) skipped" if splits.skipped else "")
        + "; `clfkit data check` also finds near-duplicates, label errors and image-quality issues"
    )
    return line, {**counts, "imbalance": imbalance}
