"""A folder dataset's files as a :class:`~clfkit.data.audit.findings.Catalog`: the folder's own
listing (clfkit.data.class_folders.scan_folder: the same files, labels and refusals as training) and
each file's record (clfkit.data.audit.records, cached by content). Nothing under the root is
written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from clfkit.data import image_files
from clfkit.data.audit import records
from clfkit.data.audit.findings import Catalog
from clfkit.data.class_folders import relative_names, scan_folder, warn_not_images
from clfkit.errors import DataError


def load_catalog(root: str | Path, cache_base: Optional[Path]) -> tuple[Catalog, dict[str, Any]]:
    """(the catalog of the folder dataset at ``root``, timings and cache statistics).
    ``cache_base``: the cache dir (None: no cache). A DataError for a layout that cannot be
    read as classes (clfkit.data.class_folders), or when no image can be decoded."""
    t0 = time.perf_counter()
    plan = scan_folder(root)
    warn_not_images(plan)
    split, paths, labels = [], [], []
    for name, (files, labs) in plan.splits.items():
        split += [name] * len(files)
        paths += files
        labels += labs if labs is not None else [-1] * len(files)
    recs, errors, stats = records.records_for(paths, records.cache_file(cache_base, plan.root))
    readable = np.array([e is None for e in errors], dtype=bool)
    if not readable.any():
        raise DataError(
            f"no image under {image_files.escape_path(str(plan.root))} could be decoded "
            f"(e.g. {image_files.escape_path(paths[0])}: {errors[0]})"
        )
    shown = relative_names(paths, plan.root)
    skipped = list(plan.not_followed) + [(plan.show(p), e) for p, e in zip(paths, errors) if e is not None]
    catalog = Catalog(
        plan.class_names, split, shown, np.array(labels, dtype=np.int64), recs, readable, skipped
    )
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    stats["root"] = str(plan.root)
    return catalog, stats
