"""Exact resume: everything a run needs to continue as if it had never stopped.

``last.pt`` holds, besides the weights, the training state under plain keys, all of it
loadable with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts;
no numpy objects, no pickled classes)::

    optimizer, scheduler, scaler      state_dicts
    step                              optimizer steps taken in the run
    epoch                             epochs completed
    in_epoch                          None at an epoch boundary; mid-epoch (a step checkpoint or
                                      an interrupt): {"batch": batches done in the epoch,
                                      "lr": the LR the epoch started with}
    ranks                             one dict per process, by rank (one for a plain run, the world
                                      size under DDP): {"rng": its global generators
                                      (see rng_state)}, and mid-epoch also "aug_rng" (its
                                      augmentation generator) and its partial sums "loss_sum",
                                      "correct", "seen", "nonfinite"
    best, history                     best epoch so far and the metrics rows written so far
    extra                             {key: state_dict()} of any other stateful object the
                                      trainer was given (EMA, early stopping, ...)

Why a resumed run matches an uninterrupted one bit for bit (deterministic CPU runs): the
batch order of an epoch is a pure function of (seed, epoch) (``engine.batches.epoch_order``), and so
are per-image (albumentations) draws, reseeded per image; a mid-epoch resume skips the
epoch's first ``batch`` batches and restores every generator (global ones and the batched
augmentation generator) to its state at the checkpoint.

Under DDP each rank has its own augmentation stream (``distributed.rank_seed``) and sums its
own share of the epoch's metrics, so each rank restores its own entry of ``ranks``, and the
epoch-end reduction over ranks gives what an uninterrupted run reports. A mid-epoch checkpoint
therefore resumes only with the world size that saved it (anything else is refused). An
epoch-boundary one resumes with any: every rank's next augmentation seed and batch order
derive from (seed, epoch, rank), and a rank with no saved entry takes rank 0's generators.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from clfkit.train.engine import distributed
from clfkit.train.engine.snapshot import EpochProgress, rng_state
from clfkit.errors import ClfkitError, ResumeError, TrainingError
from clfkit.recipe import Recipe, read_yaml, validate_recipe
from clfkit.run.checkpoint import load_checkpoint, load_weights, recipe_differences, require_model_fields
from clfkit.run.run_folder import RunFolder

RESUME_FORMAT = 2  # 2: per-rank "ranks" list (1: one process, "rng" and in_epoch sums at the top)
RANK_KEYS = ("aug_rng", "loss_sum", "correct", "seen", "nonfinite")  # a rank's own in-epoch state


@dataclass
class Resumed:
    """What :func:`load_resume_state` hands the trainer."""

    run_dir: Path
    state: dict[str, Any]
    epoch: int  # epochs completed
    history: list[dict] = field(default_factory=list)
    recipe: Any = None  # the validated recipe of last.pt (check_resumable)
    allow_data_change: bool = False  # --allow-data-change (clfkit.run.data_record)

    @property
    def mid_epoch(self) -> bool:
        return self.state["in_epoch"] is not None

    def for_rank(self, rank: int, world_size: int) -> tuple[dict, Optional[EpochProgress]]:
        """This rank's global generator states and, mid-epoch, its :class:`EpochProgress`.
        A mid-epoch checkpoint saved by another number of processes is refused."""
        ranks, in_epoch = self.state["ranks"], self.state["in_epoch"]
        if in_epoch is None:
            return (ranks[rank] if len(ranks) == world_size else ranks[0])["rng"], None
        if len(ranks) != world_size:
            saved = len(ranks)
            how = (
                "clfkit train --resume RUN"
                if saved == 1
                else f"torchrun --nproc_per_node={saved} -m clfkit train --resume RUN on one machine"
            )
            raise TrainingError(
                f"cannot resume {self.run_dir} with {world_size} process(es): its last.pt was saved in the "
                f"middle of epoch {self.epoch + 1} (after batch {in_epoch['batch']}) by {saved} process(es) "
                f"and holds each one's own random and augmentation state, so it continues only with {saved}. "
                f"Resume with {saved} ({how}); to change the number of processes, let that resumed run pass "
                f"an epoch end and stop it there (Ctrl-C after an epoch line): an epoch-end last.pt resumes "
                f"with any number"
            )
        mine = ranks[rank]
        return mine["rng"], EpochProgress(
            batch=int(in_epoch["batch"]),
            lr=in_epoch.get("lr"),
            aug_rng=mine["aug_rng"],
            loss_sum=mine["loss_sum"],
            correct=mine["correct"],
            seen=int(mine["seen"]),
            nonfinite=int(mine["nonfinite"]),
            rng=mine["rng"],
        )


def training_state(
    *,
    epoch: int,
    step: int,
    progress: Optional[EpochProgress],
    optimizer,
    scheduler,
    scaler,
    best: dict,
    history: list[dict],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The resume part of ``last.pt`` (merged with the weights and recipe by the trainer).
    Under DDP every rank must call it at once: it gathers the ranks' own states."""
    best = {k: v for k, v in best.items() if k in ("val_acc", "epoch", "row")}
    mine = {"rng": rng_state()}
    if progress is not None:
        mine.update({k: getattr(progress, k) for k in RANK_KEYS})
    return {
        "resume_format": RESUME_FORMAT,
        "epoch": epoch,
        "step": step,
        "in_epoch": {"batch": progress.batch, "lr": progress.lr} if progress is not None else None,
        "ranks": distributed.gather(mine),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best": best,
        "history": history,
        "extra": {k: obj.state_dict() for k, obj in extra.items()},
    }


def restore(resumed: Resumed, *, model, optimizer, scheduler, scaler, extra: dict[str, Any]) -> None:
    """Load model, optimizer, scheduler, scaler and extra states from a resume checkpoint."""
    s, last = resumed.state, RunFolder(resumed.run_dir).last
    load_weights(model, s["model"], str(last))
    saved = s.get("extra") or {}
    try:  # states that do not fit what the recipe builds: a hand-edited or damaged last.pt
        optimizer.load_state_dict(s["optimizer"])
        scheduler.load_state_dict(s["scheduler"])
        if scaler is not None and s.get("scaler") is not None:
            scaler.load_state_dict(s["scaler"])
        for key, obj in extra.items():
            if key in saved:
                obj.load_state_dict(saved[key])
    except (ValueError, KeyError, TypeError, RuntimeError, AttributeError) as e:
        raise ResumeError(
            f"cannot resume: the training state in {last} does not fit the run its recipe "
            f"builds ({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}); "
            f"a damaged or hand-edited last.pt. Train the run again"
        ) from None
    unknown = sorted(set(saved) - set(extra))
    if unknown:
        warnings.warn(
            f"last.pt holds state for {unknown}, which this trainer does not use; ignored", stacklevel=2
        )


def load_resume_state(run_dir: str | Path) -> Resumed:
    """Read ``RUN_DIR/last.pt`` for resuming; every way it can be unusable is a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume: run folder {run_dir} does not exist")
    last = RunFolder(run_dir).last
    if not last.is_file():
        raise _no_last_pt(run_dir)
    state = load_checkpoint(last)  # a truncated or non-clfkit file: a ModelFileError naming it
    if "optimizer" not in state or ("rng" not in state and "ranks" not in state):
        raise ResumeError(f"cannot resume: {last} holds weights only, not the training state")
    if not isinstance(state.get("resume_format", 0), int) or state.get("resume_format", 0) > RESUME_FORMAT:
        raise ResumeError(f"cannot resume: {last} was written by a newer clfkit; upgrade clfkit")
    problem = _resume_state_problem(state)
    if problem:
        raise ResumeError(f"cannot resume: {last} is damaged or hand-edited: {problem}. Train the run again")
    if "ranks" not in state:  # format 1: one process, its own state at the top level
        in_epoch = state.get("in_epoch")
        state["ranks"] = [
            {"rng": state["rng"], **({k: in_epoch.get(k, 0) for k in RANK_KEYS} if in_epoch else {})}
        ]
        state["in_epoch"] = {"batch": in_epoch["batch"], "lr": in_epoch.get("lr")} if in_epoch else None
    best = RunFolder(run_dir).best
    if best.exists():  # the final test evaluation (and export) use it: refuse now, not after the training
        _check_best(load_checkpoint(best), state, best)
    return Resumed(run_dir, state, int(state["epoch"]), list(state.get("history") or []))


def describe_class_change(old: list[str], new: list[str]) -> Optional[str]:
    """What changed between the classes a run was trained on and the data's classes now
    (None when nothing did): labels are class indices, so any change would mislabel."""
    if list(old) == list(new):
        return None
    added = [c for c in new if c not in old]
    removed = [c for c in old if c not in new]
    parts = []
    if removed:
        parts.append(f"gone: {', '.join(map(repr, removed))}")
    if added:
        parts.append(f"new: {', '.join(map(repr, added))}")
    if not parts:
        parts.append("the same names in another order")
    return (
        f"the run was trained on {len(old)} classes {list(old)}, but its data now has {len(new)} classes "
        f"{list(new)} ({'; '.join(parts)}). Class indices would no longer match the labels the model "
        f"learned"
    )


def check_same_data(resumed: Resumed, class_names: list[str], channels: int, image_size) -> None:
    """A resumed run must see the classes and input shape its last.pt was trained on: the
    labels are class indices, so other classes would silently mislabel."""
    last = RunFolder(resumed.run_dir).last
    change = describe_class_change(resumed.state["class_names"], class_names)
    if change:
        raise ResumeError(
            f"cannot resume {resumed.run_dir}: {change}. Restore the class folders as they were, "
            f"or train a new run on the new classes; nothing was changed in the run folder"
        )
    spec = resumed.state["input"]
    now = {"channels": channels, "image_size": list(image_size)}
    was = {"channels": spec["channels"], "image_size": list(spec["image_size"])}
    if now != was:
        raise ResumeError(
            f"cannot resume {resumed.run_dir}: {last} was trained on {was}, but the data now "
            f"gives {now}; train a new run instead"
        )


def stored_normalization(resumed: Resumed) -> tuple[list[float], list[float], str]:
    """The input mean/std the run started with (last.pt's input record, checked by
    check_resumable), and where they came from."""
    spec = resumed.state["input"]
    return list(spec["mean"]), list(spec["std"]), spec.get("normalize_from", "run's last.pt")


def _check_best(best_state: dict[str, Any], last_state: dict[str, Any], best: Path) -> None:
    """best.pt must rebuild the same model as last.pt (same weight names and shapes)."""
    require_model_fields(best_state, str(best))
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in (last_state.get("model") or {}).items()}
    theirs = {k: tuple(getattr(v, "shape", ())) for k, v in best_state["model"].items()}
    if shapes and shapes != theirs:
        odd = sorted(k for k in shapes.keys() | theirs.keys() if shapes.get(k) != theirs.get(k))
        raise ResumeError(
            f"cannot resume: {best} does not hold the weights of this run's model (they differ "
            f"from last.pt's at {', '.join(odd[:3])}{' ...' if len(odd) > 3 else ''}); a damaged or "
            f"hand-edited best.pt. Restore it, or train the run again"
        )


def _resume_state_problem(state: dict[str, Any]) -> Optional[str]:
    """Why the training-state fields of a last.pt are unusable (None when they look right)."""
    missing = [k for k in ("epoch", "step") if k not in state]
    if missing:
        return f"it lacks {', '.join(map(repr, missing))}"
    for key in ("epoch", "step"):
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            return f"{key!r} is {v!r}, not a whole number >= 0"
    in_epoch = state.get("in_epoch")
    if in_epoch is not None and not (isinstance(in_epoch, dict) and isinstance(in_epoch.get("batch"), int)):
        return f"'in_epoch' is {in_epoch!r}"
    ranks = state.get("ranks", [{"rng": state.get("rng")}])
    if not (
        isinstance(ranks, list)
        and ranks
        and all(isinstance(r, dict) and isinstance(r.get("rng"), dict) for r in ranks)
    ):
        return "'ranks' is not a list of per-process states"
    if not isinstance(state.get("best", {}), dict) or not isinstance(state.get("history", []), list):
        return "'best' or 'history' is not what the trainer writes"
    return None


def check_resumable(run_dir: str | Path) -> Resumed:
    """``run_dir``'s last.pt read for resuming (``clfkit train --resume``): a missing folder or
    last.pt, a damaged checkpoint or a run that already finished is a ResumeError. Call it
    holding the run's lock (the trainer's resume_run does)."""
    run_dir = Path(run_dir)
    resumed = load_resume_state(run_dir)
    folder = RunFolder(run_dir)
    last = folder.last
    missing = [
        k for k in ("model", "recipe", "class_names", "input", "scheduler", "best") if k not in resumed.state
    ]
    if missing:
        raise ResumeError(
            f"cannot resume: {last} is damaged or hand-edited: it lacks "
            f"{', '.join(map(repr, missing))}. Train the run again"
        )
    resumed.recipe = validate_recipe(resumed.state["recipe"], source=f"{last} recipe")
    epochs = resumed.recipe.train.epochs
    if resumed.epoch >= epochs and not resumed.mid_epoch and folder.finished:
        raise ResumeError(f"cannot resume: the run in {run_dir} already finished all {epochs} epochs")
    check_recipe_file(folder, resumed.recipe)
    return resumed


def check_recipe_file(folder: RunFolder, recipe: Recipe) -> None:
    """``RUN/recipe.yaml`` still says what last.pt trains: a resume continues last.pt's recipe,
    so an edit there (more epochs, another lr) would be silently ignored and leave the folder
    recording a recipe its run never used. A missing recipe.yaml is written back on resume."""
    if not folder.recipe.is_file():
        return
    how = (
        f"restore {folder.recipe} (or delete it: --resume writes it back from last.pt); to train "
        f"with the edited recipe, start a new run: clfkit train {folder.recipe} --out OTHER_FOLDER"
    )
    try:
        on_file = validate_recipe(read_yaml(folder.recipe), source=str(folder.recipe)).to_dict()
    except ClfkitError as e:
        raise ResumeError(
            f"cannot resume: {folder.recipe} no longer reads as the run's recipe ({e}); {how}"
        ) from None
    changed = recipe_differences(recipe.to_dict(), on_file)
    if changed:
        shown = "; ".join(f"{path}: {old!r} -> {new!r}" for path, old, new in changed[:5])
        more = f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        raise ResumeError(
            f"cannot resume: {folder.recipe} was edited since the run started ({shown}{more}); "
            f"--resume continues the run exactly as last.pt records it, so the edit would be "
            f"ignored; {how}"
        )


def check_folder_resumable(run_dir: Path) -> None:
    """The cheap checks before the lock is taken: the folder and its last.pt exist."""
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume: run folder {run_dir} does not exist")
    if not RunFolder(run_dir).last.is_file():
        raise _no_last_pt(run_dir)


def _no_last_pt(run_dir: Path) -> ResumeError:
    """The error for a folder without last.pt: a run stopped early, or the folder that holds runs
    (``--resume runs`` for ``--resume runs/NAME``)."""
    if not RunFolder(run_dir).is_run:
        try:
            runs = sorted(p.name for p in run_dir.iterdir() if RunFolder(p).last.is_file())
        except OSError:  # an unreadable folder: the plain message below
            runs = []
        if runs:
            shown = ", ".join(str(run_dir / r) for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
            return ResumeError(
                f"cannot resume: {run_dir} is not a run folder, it holds run folders; "
                f"name one of them: {shown}"
            )
    return ResumeError(
        f"cannot resume: {run_dir} has no last.pt (the run stopped before its first "
        f"checkpoint); start it again with `clfkit train RECIPE`"
    )
