"""The data a study ranks its trials on, checked before the first trial runs: there is a val
split to rank by, and a continued study reads the data it began on.

Trials are ranked by best val accuracy, so they must all be scored on one val set. A folder
dataset's content fingerprint (clfkit.data.cache.FINGERPRINTS: every file's path, label and
content hash, the same hash ``train --resume`` checks, clfkit.run.data_record) is kept in the
study when it begins, with ``data_files.json`` in the tune folder to say what changed; a
continued study on other files is refused. A generated dataset has no files: the recipe
(checked by clfkit.studies.tune.study) is what identifies it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clfkit import registry
from clfkit.recipe import apply_override, validate_recipe
from clfkit.run.data_record import (
    DataChangedError,
    describe_changes,
    where,
    write_manifest,
)
from clfkit.run.run_folder import RunFolder
from clfkit.studies.tune.space import TuneError
from clfkit.studies.tune.study import TuneSetup

DATA_ATTR = "data"  # study user attr: {"where": ..., "fingerprint": ...}


def _val_fractions(setup: TuneSetup) -> list[float]:
    """Every data.val_fraction a trial of this space may train with (a range: its low end)."""
    searched = next((d for d in setup.dims if d.key == "data.val_fraction"), None)
    if searched is None:
        return [validate_recipe(setup.base).data.val_fraction]
    return [float(v) for v in (searched.args if searched.kind == "choice" else searched.args[:1])]


def check_val_split(setup: TuneSetup) -> None:
    """A TuneError unless every trial will have a val split to be ranked by: data.val_fraction
    > 0, or a dataset with its own val split (a folder's val/, a generated set's val_size)."""
    fractions = _val_fractions(setup)
    if min(fractions) > 0:
        return
    data = copy.deepcopy(setup.base)
    apply_override(data, ["data", "val_fraction"], 0.0)
    recipe = validate_recipe(data)
    name, args = registry.split_spec(recipe.data.source)
    if name == "folder":
        from clfkit.data.class_folders import scan_folder

        has_val = "val" in scan_folder(args["root"]).splits  # no file opened
    else:
        from clfkit.train.build import build_data

        has_val = build_data(recipe).val is not None
    if not has_val:
        searched = (
            "a trial with data.val_fraction=0 (--space)" if len(fractions) > 1 else "data.val_fraction is 0"
        )
        raise TuneError(
            f"clfkit tune ranks trials by val accuracy, but {searched} and the data at "
            f"{where(recipe.data.source)} has no val split of its own; set data.val_fraction > 0 "
            f"(--set data.val_fraction=0.2) or give the dataset a val/ folder. No trial was run"
        )


def check_study_data(study: Any, setup: TuneSetup, log: Callable[[str], None]) -> None:
    """Record the data's fingerprint when the study begins; refuse to continue it on changed
    data (a DataChangedError naming how many files were added, removed or changed)."""
    from clfkit.data.cache import FINGERPRINTS

    source = validate_recipe(setup.base).data.source
    name, args = registry.split_spec(source)
    if name not in FINGERPRINTS:
        return
    now = FINGERPRINTS[name](**args)
    had = study.user_attrs.get(DATA_ATTR)
    out = Path(setup.out)
    trials = study.get_trials(deepcopy=False)
    if not isinstance(had, dict) or not trials:  # a new study, or one no trial has run in yet
        if trials:
            log(
                f"warning: {out}/study.db does not record the data its trials ran on (an older clfkit); "
                f"recorded from now on"
            )
        study.set_user_attr(DATA_ATTR, {"where": where(source), "fingerprint": now})
        write_manifest(RunFolder(out), source)
        return
    if had.get("fingerprint") == now:
        return
    detail = describe_changes(out, source)
    raise DataChangedError(
        f"cannot continue the study in {out}: the data at {where(source)} changed since it began"
        + (f" ({detail})" if detail else "")
        + ". Its trials so far were ranked on the old val split; new "
        "ones would be scored on another and the ranking would mix the two. Restore the data as it was, or "
        "start a new study on the changed data with another --out. Nothing in the tune folder was changed"
    )
