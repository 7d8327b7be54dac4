"""Findings: what is wrong with which files, from their records.

A :class:`Catalog` lists every file of a dataset once (split, path, label, record). Each check
turns it into :class:`Finding` objects: the kind, the files involved (catalog rows, the
reference file first), a certainty score (1 = certain; findings are shown most certain first)
and a one-line detail. Kinds, in the order they are reported:

- ``conflict``: the same pixels under two classes (at least one label is wrong);
- ``leak``: the same pixels in two splits (a val/test figure measured on training images);
- ``exact_duplicate``: the same pixels twice in one split (counted twice, weighted twice);
- ``near_duplicate``: across splits, perceptual hashes within ``PHASH_DISTANCE`` bits;
- ``feature_neighbour`` and ``label_issue``: from a model (clfkit.audit);
- ``dark``, ``light``, ``blurry``, ``low_information``, ``odd_aspect_ratio``: CleanVision's
  image issues with its default thresholds (clfkit.data.audit.records).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from clfkit.data import image_files
from clfkit.data.audit import neighbours

KINDS = (
    "conflict",
    "leak",
    "exact_duplicate",
    "near_duplicate",
    "feature_neighbour",
    "label_issue",
    "dark",
    "light",
    "blurry",
    "low_information",
    "odd_aspect_ratio",
)
SPLIT_ORDER = ("train", "val", "test")
# CleanVision's default thresholds: an image is flagged when its score is below them
QUALITY_THRESHOLDS = {
    "dark": 0.32,
    "light": 0.05,
    "blurry": 0.29,
    "low_information": 0.3,
    "odd_aspect_ratio": 0.35,
}
# Hamming distance (of 64 bits) up to which two images of different splits are near-duplicates.
# Chosen on flowers5_128 (bench/data_check_bench.py, docs/data-check.md): planted JPEG q70
# re-encodes and 90% resizes are 0-2 bits from their source, 4-px crops 2-12 (24 of 30 within
# 8). Of the shipped data's test images, the 12 whose nearest train image is within 8 bits are
# all genuine near-copies (checked by eye); at 10 bits 7 more pairs come in, 4 of them
# different photos; at 12, 28 more, nearly all different.
PHASH_DISTANCE = 8
# Cosine similarity of penultimate features (``--run``) from which a val/test image and its
# nearest train image are reported (unless pixels or hashes paired them already). Chosen on the
# planted flowers5_128 bench with a 32-px CNN (docs/data-check.md): planted exact, JPEG and
# resized copies are >= 0.9996 from their source, 4-px crops 0.949-1.0 (median 0.994), while
# an unplanted test image's nearest train image is 0.888 at the median and 0.985 at the 99th
# percentile: 0.99 keeps all the first and half the crops, and about 1% of the rest.
FEATURE_SIMILARITY = 0.99


@dataclass
class Catalog:
    """Every file of a dataset: row i is file i. ``label`` -1: unlabelled. ``readable`` False:
    no record (the file could not be decoded; listed in ``skipped``)."""

    class_names: list[str]
    split: list[str]
    path: list[str]  # as shown: relative to the data root, escaped
    label: np.ndarray
    records: np.ndarray  # clfkit.data.audit.records.RECORD
    readable: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.path)

    def rows_of(self, split: str) -> np.ndarray:
        return np.array(
            [i for i, s in enumerate(self.split) if s == split and self.readable[i]], dtype=np.int64
        )

    def splits(self) -> list[str]:
        return [s for s in SPLIT_ORDER if s in set(self.split)]

    def file(self, row: int) -> dict[str, Any]:
        lab = int(self.label[row])
        return {
            "split": self.split[row],
            "path": image_files.escape_path(self.path[row]),
            "label": self.class_names[lab] if lab >= 0 else None,
        }


@dataclass
class Finding:
    kind: str
    rows: list[int]
    score: float
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, catalog: Catalog) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "score": round(float(self.score), 4),
            "detail": self.detail,
            "files": [catalog.file(r) for r in self.rows],
            **self.extra,
        }


# --------------------------------------------------------------------------- exact
def same_content_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Positions of every key that occurs more than once, one array per key (sorted)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    return [order[s : s + n] for s, n in zip(starts, sizes) if n > 1]


def exact_findings(
    split: list[str], label: np.ndarray, keys: np.ndarray, rows: np.ndarray, class_names: list[str]
) -> list[Finding]:
    """Conflicts, leaks and duplicates among ``rows`` (catalog rows) whose ``keys`` (pixel
    hashes, one per row) are equal. A group in two splits and two classes is both a leak and
    a conflict."""
    found = []
    for group in same_content_groups(keys):
        members = sorted(rows[group].tolist(), key=lambda r: (SPLIT_ORDER.index(split[r]), r))
        labels = sorted({int(label[r]) for r in members if label[r] >= 0})
        splits = sorted({split[r] for r in members}, key=SPLIT_ORDER.index)
        if len(labels) > 1:
            found.append(
                Finding(
                    "conflict",
                    members,
                    1.0,
                    "the same image under classes " + ", ".join(class_names[k] for k in labels),
                )
            )
        if len(splits) > 1:
            found.append(Finding("leak", members, 1.0, "the same image in " + " and ".join(splits)))
        elif len(labels) <= 1:
            found.append(Finding("exact_duplicate", members, 1.0, f"{len(members)} copies in {splits[0]}"))
    return found


# --------------------------------------------------------------------------- near
def near_duplicate_findings(catalog: Catalog, max_distance: int = PHASH_DISTANCE) -> list[Finding]:
    """Pairs of images in different splits whose perceptual hashes differ in at most
    ``max_distance`` bits and whose pixels differ (equal pixels are exact findings)."""
    found = []
    splits = catalog.splits()
    for a, later in enumerate(splits[1:], 1):
        query = catalog.rows_of(later)
        for earlier in splits[:a]:
            ref = catalog.rows_of(earlier)
            if not len(query) or not len(ref):
                continue
            qv = neighbours.hash_vectors(catalog.records["phash"][query])
            rv = neighbours.hash_vectors(catalog.records["phash"][ref])
            qi, ri, sim = neighbours.pairs_above(qv, rv, 64 - 2 * max_distance)
            for q, r, s in zip(query[qi], ref[ri], sim):
                if catalog.records["pixels"][q] == catalog.records["pixels"][r]:
                    continue
                bits = int(round((64 - s) / 2))
                found.append(
                    Finding(
                        "near_duplicate",
                        [int(r), int(q)],
                        1 - bits / 64,
                        f"{earlier}/{later}: perceptual hashes {bits} bit(s) apart",
                        {"distance_bits": bits},
                    )
                )
    return found


# --------------------------------------------------------------------------- quality
def quality_findings(catalog: Catalog) -> list[Finding]:
    """CleanVision's issues: one finding per file and issue, worst first."""
    found = []
    ok = np.flatnonzero(catalog.readable)
    for kind, threshold in QUALITY_THRESHOLDS.items():
        values = catalog.records[kind][ok].astype(np.float64)
        for r, v in zip(ok[values < threshold], values[values < threshold]):
            found.append(
                Finding(
                    kind,
                    [int(r)],
                    1 - float(v) / threshold,
                    f"score {v:.3f} below CleanVision's {threshold}",
                    {"value": round(float(v), 4)},
                )
            )
    return found


# --------------------------------------------------------------------------- overview
def class_counts(split: list[str], label: np.ndarray, class_names: list[str]) -> dict[str, dict[str, int]]:
    """Per split, images per class (unlabelled splits: no entry)."""
    out: dict[str, dict[str, int]] = {}
    for s in SPLIT_ORDER:
        labs = [int(label[i]) for i, x in enumerate(split) if x == s and label[i] >= 0]
        if labs:
            counts = Counter(labs)
            out[s] = {c: counts.get(k, 0) for k, c in enumerate(class_names)}
    return out


def imbalance_note(counts: dict[str, int]) -> Optional[str]:
    """A line when the largest class has 10x the images of the smallest (or a class has none)."""
    least, most = min(counts, key=counts.get), max(counts, key=counts.get)
    if counts[least] == 0:
        return f"class {least} has no images"
    if counts[most] >= 10 * counts[least]:
        return f"class {most} has {counts[most]} images, {least} {counts[least]} ({counts[most] / counts[least]:.0f}x)"
    return None


def overview(catalog: Catalog) -> dict[str, Any]:
    """Class balance, image sizes and modes, files skipped: the table beside the findings."""
    ok = np.flatnonzero(catalog.readable)
    rec = catalog.records[ok]
    sizes = Counter(f"{w}x{h}" for w, h in zip(rec["width"].tolist(), rec["height"].tolist()))
    modes = Counter(m.decode() for m in rec["mode"].tolist())
    # decoded images only: an unreadable file is listed in "skipped", never counted as its class's
    counts = class_counts(catalog.split, np.where(catalog.readable, catalog.label, -1), catalog.class_names)
    return {
        "images": {s: int(len(catalog.rows_of(s))) for s in catalog.splits()},
        "class_counts": counts,
        "imbalance": {s: imbalance_note(c) for s, c in counts.items() if imbalance_note(c)},
        "sizes": dict(sizes.most_common(8)),
        "distinct_sizes": len(sizes),
        "modes": dict(modes.most_common()),
        "skipped": [list(s) for s in catalog.skipped],
    }


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """By kind (KINDS order), then most certain first."""
    return sorted(findings, key=lambda f: (KINDS.index(f.kind), -f.score))
