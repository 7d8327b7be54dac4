"""Findings that need a model: likely label errors and feature neighbours across splits.

Label errors are found by cleanlab's ``find_label_issues`` (confident learning, Northcutt et
al. 2021) on out-of-sample probabilities, ranked by self-confidence (the probability the model
gives the image's own label: lowest first). cleanlab is an optional dependency
(``pip install 'clfkit[audit]'``).

Feature neighbours: each val/test image's nearest train image by cosine similarity of the
model's penultimate features; a pair is reported when the similarity is at least
``FEATURE_SIMILARITY`` (clfkit.data.audit.findings, where the threshold's choice is written
down) and the pair was not already found by pixels or perceptual hash.
"""

from __future__ import annotations

import warnings
from typing import Optional

import numpy as np

from clfkit.audit.model_outputs import SplitOutputs
from clfkit.data.audit import neighbours
from clfkit.data.audit.findings import FEATURE_SIMILARITY, Catalog, Finding
from clfkit.errors import MissingDependency


def _cleanlab():
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise MissingDependency(
            "finding label errors (--run, --folds) needs cleanlab: "
            "pip install 'clfkit[audit]' (or pip install cleanlab)"
        ) from None
    return find_label_issues


def label_findings(
    catalog: Catalog, outputs: SplitOutputs, split: str, source: str
) -> tuple[list[Finding], Optional[str]]:
    """(likely label errors of ``split``, a note when the split cannot be checked)."""
    keep = (outputs.rows >= 0) & (catalog.label[np.maximum(outputs.rows, 0)] >= 0)
    rows, probs = outputs.rows[keep], outputs.probs[keep]
    labels = catalog.label[rows]
    if len(rows) < 2 or len(np.unique(labels)) < 2:
        return [], f"{split}: label errors not checked (needs labelled images of two classes or more)"
    find_label_issues = _cleanlab()
    with warnings.catch_warnings():  # cleanlab warns about classes with few images
        warnings.simplefilter("ignore")
        try:
            ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
        except (ValueError, IndexError) as e:  # e.g. too few images of a class to estimate its noise
            return [], f"{split}: label errors not checked (cleanlab: {type(e).__name__}: {e})"
    found = []
    for i in ranked:
        given, suggested = int(labels[i]), int(probs[i].argmax())
        found.append(
            Finding(
                "label_issue",
                [int(rows[i])],
                1 - float(probs[i, given]),
                f"labelled {catalog.class_names[given]}, the model says "
                f"{catalog.class_names[suggested]} (p={probs[i, suggested]:.2f}; {source})",
                {
                    "given": catalog.class_names[given],
                    "suggested": catalog.class_names[suggested],
                    "p_given": round(float(probs[i, given]), 4),
                    "source": source,
                },
            )
        )
    return found, None


def feature_neighbour_findings(
    catalog: Catalog,
    outputs: dict[str, SplitOutputs],
    already: set[frozenset],
    min_similarity: float = FEATURE_SIMILARITY,
) -> list[Finding]:
    """Val/test images whose nearest train image (penultimate features) is at least
    ``min_similarity`` cosine-similar, except pairs in ``already`` (found by pixels or hash)."""
    train = outputs.get("train")
    if train is None or train.features is None:
        return []
    ref = neighbours.unit_rows(train.features)
    found = []
    for split in ("val", "test"):
        out = outputs.get(split)
        if out is None or out.features is None:
            continue
        idx, sim = neighbours.nearest(neighbours.unit_rows(out.features), ref)
        for q, j, s in zip(out.rows, idx, sim):
            r = int(train.rows[j])
            if s >= min_similarity and q >= 0 and r >= 0 and frozenset((int(q), r)) not in already:
                found.append(
                    Finding(
                        "feature_neighbour",
                        [r, int(q)],
                        float(s),
                        f"train/{split}: penultimate features {s:.3f} cosine-similar",
                        {"similarity": round(float(s), 4)},
                    )
                )
    return found
