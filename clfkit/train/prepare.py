"""The steps of a run before its epochs, each a function of explicit values returning a small
frozen record the next steps read: :func:`set_up` (device, processes, console) ->
:func:`load_data` -> :func:`build` (model, optimizer, batches: the engine's
:class:`~clfkit.train.engine.loop.TrainState`) -> :func:`open_folder` (the run folder, locked)
-> :func:`start` (fresh, or every state as last.pt saved it). ``train()``
(clfkit.train.trainer) calls them in this order and hands their records to the
:class:`~clfkit.train.trainer.Trainer`, which runs the epochs.

The data and the model are built before the run folder exists: a data error, a bad ``init:``
file or a bad ``loss.class_weights`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from clfkit import __version__
from clfkit.data import ImageSet, Splits, disk_storage
from clfkit.data.audit.quick import quick_check
from clfkit.errors import DataCheckWarning, TrainingError
from clfkit.recipe import Recipe
from clfkit.run.data_record import check_unchanged, data_record, write_manifest
from clfkit.run.resume import Resumed, check_same_data, restore, stored_normalization
from clfkit.run.run_folder import RunFolder
from clfkit.train.build import (
    build_augmentations,
    build_data,
    build_loss,
    build_model,
    build_optimizer,
    build_regularizers,
    build_schedule,
)
from clfkit.train.engine import distributed
from clfkit.train.engine.batches import num_batches
from clfkit.train.engine.ema import WeightEMA
from clfkit.train.engine.loop import TrainState, optimizer_steps
from clfkit.train.engine.placement import place_splits
from clfkit.train.engine.prep import BatchPrep
from clfkit.train.engine.runtime import (
    Runtime,
    compiled,
    grad_scaler,
    place_model,
    resolve_runtime,
    seed_everything,
)
from clfkit.train.engine.snapshot import EpochProgress, set_rng_state
from clfkit.train.engine.stopping import EarlyStopper
from clfkit.train.engine.stream_batches import train_batches_for
from clfkit.train.init_weights import input_normalization, load_init
from clfkit.util.heap import release_free_memory
from clfkit.util.atomic import remove_stale_temps
from clfkit.util.progress import Reporter


@dataclass(frozen=True)
class RunSetup:
    """What the run computes on, decided before any data is read."""

    rt: Runtime
    world: distributed.World
    report: Reporter
    resume_rng: Optional[dict]  # this rank's RNG state in last.pt (None: a fresh run)
    resume_at: Optional[EpochProgress]  # where in its epoch last.pt was saved (None: at an epoch end)


@dataclass(frozen=True)
class RunData:
    """The data a run trains on, where it came from, what the train-time check found, and the
    input statistics it uses."""

    splits: Splits
    seconds: float  # reading (or decoding) it
    record: dict[str, Any]  # which files (clfkit.run.data_record): summary.json and every checkpoint
    note: Optional[str]  # resuming on changed data (--allow-data-change): what changed
    mean: list[float]
    std: list[float]
    normalize_from: str  # the train split, the init run or the recipe
    check: dict[str, Any]  # the train-time data check (clfkit.data.audit.quick): summary.json's data_check
    # said after the run's first line (open_folder): a recipe refused later prints only its error
    check_lines: tuple[str, ...]
    check_warnings: tuple[str, ...]


@dataclass(frozen=True)
class Built:
    """The training objects (the engine's state), the batches, and what the log and every
    checkpoint say about them."""

    state: TrainState
    batches: Any  # TrainBatches, or StreamBatches for streamed shards (clfkit.train.engine.stream_batches)
    val_set: Optional[ImageSet]  # None: no val split, or an empty one
    n_params: int
    class_weights: Optional[list[float]]  # loss.class_weights as used
    batches_per_epoch: int
    eval_batch_size: int
    checkpoint_base: dict[str, Any]  # every checkpoint's fields besides the weights
    receipts: list[Any]  # of model.weights and init: (clfkit.train.weights_receipt)
    lines: list[str]  # printed once the run folder is open


@dataclass(frozen=True)
class Start:
    """Where the epochs start: epoch 0, or where last.pt left off."""

    epoch: int  # the first epoch to train (0-based)
    stopper: Optional[EarlyStopper]
    resumable: dict[str, Any]  # objects with state_dict() that last.pt carries, by stable key
    best: dict[str, Any]
    history: list[dict[str, Any]]


def set_up(recipe: Recipe, *, quiet: bool, resume: Optional[Resumed]) -> RunSetup:
    """Device and precision, the torchrun group, seeds; refuses what cannot run before anything
    is read."""
    tc = recipe.train
    rt = resolve_runtime(recipe.train.device, recipe.train.precision, recipe.train.channels_last)
    world = distributed.setup(rt)  # under torchrun: join the group, pin this rank's GPU
    # this rank's part of last.pt (a mid-epoch one resumes only with the world size that saved it)
    resume_rng, resume_at = resume.for_rank(world.rank, world.size) if resume is not None else (None, None)
    distributed.check_batch_size(
        tc.batch_size, world.size, resume is not None
    )  # before the data is read or the run folder made
    if world.active and tc.freeze:  # DDP registers its gradients once, at wrap time
        raise TrainingError(
            "train.freeze is not supported with several processes (torchrun) yet; train in one process"
        )
    if world.active and tc.on_nonfinite == "skip":
        # a rank skipping its step alone would desynchronize DDP's gradient all-reduce
        raise TrainingError(
            "train.on_nonfinite: skip is not supported with several processes "
            "(torchrun); use the default `stop`, or train in one process"
        )
    seed_everything(recipe.seed, tc.deterministic)
    report = Reporter(tc.epochs, quiet or not distributed.is_main())
    return RunSetup(rt, world, report, resume_rng, resume_at)


def load_data(recipe: Recipe, resume: Optional[Resumed], splits: Optional[Splits] = None) -> RunData:
    """Read the data (``splits``: these instead, already read); a fresh run's train-time data
    check; resuming, check it is the data the run started with."""
    t0 = time.perf_counter()
    if splits is None:
        with distributed.main_first():  # rank 0 fills the data cache, the others read it
            splits = build_data(recipe)
    seconds = time.perf_counter() - t0
    check: dict[str, Any] = {}
    check_lines: list[str] = []
    check_warnings: list[str] = []
    if resume is None and distributed.is_main():  # duplicates, leaks, conflicts: one hash per image
        line, check = quick_check(splits, check_warnings.append)
        check_lines.append(line)
    said = {"check": check, "check_lines": tuple(check_lines), "check_warnings": tuple(check_warnings)}
    if resume is None:
        mean, std, normalize_from = input_normalization(recipe, splits.train)
        return RunData(splits, seconds, data_record(splits), None, mean, std, normalize_from, **said)
    # the labels are class indices: other classes would silently mislabel
    check_same_data(resume, splits.class_names, splits.in_chans, splits.image_size)
    # the files themselves (clfkit.run.data_record): other data would silently train on other images
    record, note = check_unchanged(
        resume.run_dir,
        resume.state.get("data"),
        splits,
        recipe.data.source,
        resume.allow_data_change,
        resume.epoch,
    )
    # the statistics the run started with (the init run may have changed since)
    mean, std, normalize_from = stored_normalization(resume)
    return RunData(splits, seconds, record, note, mean, std, normalize_from, **said)


def build(recipe: Recipe, rt: Runtime, data: RunData, resume: Optional[Resumed]) -> Built:
    """Model, loss, optimizer, schedule, augmentation and the data on its device: the
    :class:`TrainState` the loop runs on and the batches it reads."""
    tc, splits = recipe.train, data.splits
    model = build_model(recipe, splits.num_classes, splits.in_chans, splits.image_size, data.mean, data.std)
    # resuming, last.pt holds the weights
    receipts = _weights_in(recipe, model, splits.class_names) if resume is None else []
    regularizers = build_regularizers(recipe)
    for r in regularizers:
        if hasattr(r, "on_model"):
            model = r.on_model(model) or model
    model = place_model(model, rt)
    loss_fn = build_loss(recipe, splits.num_classes, splits).to(rt.device)
    class_weights = getattr(loss_fn, "class_weights", None)
    optimizer = build_optimizer(recipe, model, regularizers)
    aug_names: dict[str, list[str]] = {}
    per_image, batched_aug = build_augmentations(recipe, aug_names)
    batches_per_epoch = num_batches(len(splits.train), tc.batch_size, tc.drop_last)
    steps_per_epoch = optimizer_steps(batches_per_epoch, tc.accumulate)  # what schedules count
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_schedule(recipe, steps_per_epoch))
    train_model = compiled(distributed.wrap(model, tc.sync_bn), tc.compile)  # DDP when launched by torchrun
    workers = recipe.data.workers if recipe.data.workers is not None else min(8, os.cpu_count() or 1)
    prep = BatchPrep(
        batched_aug,
        [r for r in regularizers if hasattr(r, "on_batch")],
        splits.num_classes,
        rt.channels_last,
        compile=tc.compile,
    )  # train.compile: the batch preparation too
    state = TrainState(
        rt,
        train_model,
        model,
        loss_fn,
        optimizer,
        scheduler,
        grad_scaler(rt),
        prep,
        regularizers,
        tc.on_nonfinite,
    )
    placed = place_splits(splits, rt, on_device=not per_image)  # the device's free memory decides
    batches = train_batches_for(
        placed.train,
        tc.batch_size,
        recipe.seed,
        drop_last=tc.drop_last,
        device=rt.device,
        per_image=per_image,
        workers=workers,
        sampler=recipe.data.sampler,
    )  # streamed shards: StreamBatches
    # printed once the run folder is open (clfkit.train.engine.batches; the loss's class weights)
    lines = [
        _data_path(aug_names, rt, workers, recipe.data.sampler, placed.train),
        f"normalize ({data.normalize_from}): mean {_rounded(data.mean)} std {_rounded(data.std)}",
    ]
    lines += [placed.note] if placed.note else []
    if class_weights is not None:
        lines.append(_weights_line(recipe.loss, splits.class_names, class_weights))
    return Built(
        state,
        batches,
        placed.val,
        n_params=sum(p.numel() for p in model.parameters()),
        class_weights=class_weights,
        batches_per_epoch=batches_per_epoch,
        eval_batch_size=tc.eval_batch_size or tc.batch_size * 2,
        checkpoint_base=_checkpoint_base(recipe, data),
        receipts=receipts,
        lines=lines,
    )


def _checkpoint_base(recipe: Recipe, data: RunData) -> dict[str, Any]:
    """Every checkpoint's fields besides the weights: the recipe, the classes, the input the
    model expects (what export and predict read back) and the data's record."""
    splits = data.splits
    return {
        "recipe": recipe.to_dict(),
        "class_names": splits.class_names,
        "input": {
            "image_size": list(splits.image_size),
            "channels": splits.in_chans,
            "mean": data.mean,
            "std": data.std,
            "resize": recipe.data.resize,
            "normalize_from": data.normalize_from,
        },
        "data": data.record,
    }


def _weights_in(recipe: Recipe, model: torch.nn.Module, class_names: list[str]) -> list[Any]:
    """The receipts of ``model.weights`` (loaded by the model) and ``init:`` (loaded here):
    open_folder prints one line each and writes the full lists to weights.json."""
    receipts = [r for r in [getattr(model.net, "weights_receipt", None)] if r is not None]
    if recipe.init:
        receipts.append(load_init(model, recipe.init, recipe.init_min_match, class_names))
    return receipts


def open_folder(
    recipe: Recipe,
    setup: RunSetup,
    data: RunData,
    built: Built,
    *,
    out: str | Path,
    run_dir: str | Path | None,
    resume: Optional[Resumed],
    lock: contextlib.ExitStack,
) -> RunFolder:
    """Create (or, resuming, reopen) the run folder and lock it for the rest of the run; print
    the run's first lines."""
    # only rank 0 writes the run folder; other DDP ranks get a private temp folder
    private = distributed.private_run_dir()
    folder = (
        RunFolder(private)
        if private
        else RunFolder(run_dir)
        if run_dir
        else RunFolder.create(out, recipe.name)
    )
    folder.path.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():  # first, before anything in the folder is touched
        lock.enter_context(folder.lock("resume" if resume is not None else "train into"))
    if resume is not None and distributed.is_main():
        remove_stale_temps(folder.path)  # half-written files of the crash being resumed from
    if resume is None or not folder.recipe.is_file():  # resuming: written back if deleted
        folder.write_recipe(recipe.to_yaml(), __version__)
    if data.splits.skipped:
        folder.write_skipped(data.splits.skipped)
    if resume is None or data.note:  # the files the run (from now on) trains on
        write_manifest(folder, recipe.data.source)
        release_free_memory()  # the listing of every file (175k of them: ~100 MB) is garbage now
    report = setup.report
    report.print(
        f"run {folder}  device {setup.rt.device} ({setup.rt.precision})  "
        f"data: {_describe(data.splits, data.seconds)}"
    )
    for line in ([data.note] if data.note else []) + list(data.check_lines):
        report.print(line)
    for message in data.check_warnings:
        warnings.warn(message, DataCheckWarning, 2)  # at train(), the caller of this step
    for r in built.receipts:
        report.print(r.line())
    if built.receipts and distributed.is_main():
        folder.write_weights([r.to_dict() for r in built.receipts])
    for line in built.lines:
        report.print(line)
    return folder


def start(
    recipe: Recipe, setup: RunSetup, data: RunData, built: Built, folder: RunFolder, resume: Optional[Resumed]
) -> Start:
    """Fresh run: the parity samples. Resumed run: every state as last.pt saved it."""
    tc, state, splits = recipe.train, built.state, data.splits
    if resume is None:
        src = splits.val if splits.val is not None and len(splits.val) else splits.train
        folder.write_samples(src.images[:64].numpy())  # for the exporter's parity check
    # val, best.pt and test use the EMA weights when train.ema is set
    state.ema = WeightEMA(state.net, decay=tc.ema.decay, warmup=tc.ema.warmup) if tc.ema else None
    stopper = (
        EarlyStopper(
            metric=tc.early_stopping.metric,
            patience=tc.early_stopping.patience,
            min_delta=tc.early_stopping.min_delta,
            has_val=bool(splits.val),
        )
        if tc.early_stopping
        else None
    )
    # Objects with state_dict()/load_state_dict() that last.pt must carry (EMA, early
    # stopping, ...): add them here under a stable key and resume restores them.
    resumable = {k: v for k, v in {"ema": state.ema, "early_stopping": stopper}.items() if v is not None}
    if resume is None:
        return Start(0, stopper, resumable, {"val_acc": -1.0, "epoch": 0}, [])
    restore(
        resume,
        model=state.net,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        scaler=state.scaler,
        extra=resumable,
    )
    best, history, state.step = dict(resume.state["best"]), list(resume.history), int(resume.state["step"])
    folder.rewrite_metrics(history)  # drop a metrics line written after last.pt (a crash between the two)
    if setup.resume_at is None:
        set_rng_state(setup.resume_rng)
    setup.report.print(
        f"resuming {folder} at epoch {resume.epoch + 1}"
        + (f", batch {setup.resume_at.batch + 1}" if setup.resume_at else "")
        + f" (step {state.step})"
    )
    return Start(resume.epoch, stopper, resumable, best, history)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def _weights_line(loss: dict, class_names: list[str], weights: list[float]) -> str:
    """The run log's record of loss.class_weights (summary.json keeps the list too)."""
    how = "balanced: n / (classes x train count)" if loss.get("class_weights") == "balanced" else "as given"
    return f"loss class weights ({how}): " + ", ".join(f"{n} {w:.3g}" for n, w in zip(class_names, weights))


def _data_path(
    names: dict[str, list[str]],
    rt: Runtime,
    workers: int,
    sampler: str = "shuffle",
    train: Optional[ImageSet] = None,
) -> str:
    """Which input path the run takes, for the log: a transform without a batched version
    sends every batch through CPU loader workers, and users should see that."""
    per_image, batched = names.get("per_image", []), names.get("batched", [])
    on_host = (
        per_image or rt.device.type == "cpu" or (train is not None and train.images.device.type == "cpu")
    )
    where = "host memory" if on_host else f"{rt.device.type} memory"
    line = f"data path: uint8 tensors in {where}"
    if getattr(train, "streamed", False):  # clfkit.data.streamed
        line = f"data path: {train.describe()}"
    elif train is not None and disk_storage.is_disk(train.images):
        line = f"data path: uint8 images on disk ({train.images.path}), read in shuffled chunks"
    if sampler == "balanced":
        line += "; class-balanced sampling (with replacement)"
    if per_image:
        line += f"; per-image augmentation on the CPU in {workers} loader worker(s): {', '.join(per_image)}"
    if batched:
        line += f"; batched augmentation on {rt.device.type}: {', '.join(batched)}"
    return line if per_image or batched else line + "; no augmentation"


def _describe(splits: Splits, data_seconds: float) -> str:
    """The data part of the run's first line: source, split sizes, classes, input shape."""
    return (
        f"{splits.description}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
        f"{len(splits.test) if splits.test else 0} test, {splits.num_classes} classes, "
        f"{splits.in_chans}x{splits.image_size[0]}x{splits.image_size[1]} (loaded in {data_seconds:.1f}s)"
        + (
            f", {len(splits.skipped)} unreadable file(s) skipped, listed in skipped.txt"
            if splits.skipped
            else ""
        )
    )
