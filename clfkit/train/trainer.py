"""The trainer: recipe in, run folder out.

Reads top to bottom: set up (device, precision, data, model) -> for each epoch
``train_one_epoch`` then ``evaluate`` -> checkpoints and metrics -> final test evaluation and
``summary.json``. Data lives in memory as uint8 tensors (see clfkit.data); on CUDA the whole
train split moves to the GPU and batched augmentation runs there. Metrics are accumulated on
the device and read once per epoch, so the step loop never waits for the host.

What it assembles: clfkit.train.engine (runtime, batches, the loop, DDP, EMA, early stopping),
clfkit.run.evaluation (``evaluate``), clfkit.run (the run folder, checkpoints, resume state,
metrics log, reports). The files of a run folder: clfkit.run.run_folder.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from clfkit import __version__
from clfkit.train.build import (build_augmentations, build_data, build_loss, build_model, build_optimizer,
                          build_regularizers, build_schedule)
from clfkit.data import ImageSet, Splits, disk_storage as storage
from clfkit.data.audit.quick import DataCheckWarning, quick_check
from clfkit.train.engine import distributed
from clfkit.train.engine.batches import num_batches
from clfkit.train.engine.stream_batches import train_batches_for
from clfkit.train.engine.prep import BatchPrep
from clfkit.train.engine.ema import WeightEMA
from clfkit.train.engine.freeze import frozen_in_epoch, set_backbone_frozen
from clfkit.train.engine.loop import TrainState, optimizer_steps, train_one_epoch
from clfkit.train.engine.placement import place_splits
from clfkit.train.engine.runtime import Runtime, compiled, grad_scaler, place_model, resolve_runtime, seed_everything
from clfkit.train.engine.snapshot import EpochProgress, set_rng_state
from clfkit.train.engine.stopping import EarlyStopper
from clfkit.errors import TrainingError
from clfkit.run.evaluation import evaluate, evaluate_best
from clfkit.util.atomic import remove_stale_temps
from clfkit.run.misclassified import write_mistakes
from clfkit.train.param_groups import base_lr
from clfkit.util.progress import Reporter
from clfkit.recipe import Recipe
from clfkit.run.report_page import write_run_report
from clfkit.run.checkpoint import save_checkpoint
from clfkit.run.data_record import check_unchanged, data_record, write_manifest
from clfkit.run.run_folder import RunFolder, run_lock
from clfkit.train.init_weights import input_normalization, load_init
from clfkit.run.insight import write_insight
from clfkit.run.metrics_log import MetricsLog
from clfkit.run.reader import replaces_best, selected_on
from clfkit.run.per_class import write_run_reports
from clfkit.run.resume import (Resumed, check_folder_resumable, check_resumable, check_same_data, restore,
                               stored_normalization, training_state)
from clfkit.util.signals import Interrupted, catch_stop_signals
from clfkit.run.tracking import open_trackers, require_trackers


@dataclass
class RunResult:
    """The run folder a training wrote, and its summary.json."""

    run_dir: Path
    summary: dict[str, Any]


def train(recipe: Recipe, out: str | Path = "runs", *, quiet: bool = False,
          run_dir: str | Path | None = None, resume: Optional[Resumed] = None,
          trackers: tuple[Any, ...] = (), splits: Optional[Splits] = None) -> RunResult:
    """Train ``recipe``; write everything into a new run folder under ``out``. ``splits``: train
    on these instead of the recipe's data (``clfkit data check --folds``: one fold each). ``resume``
    (from clfkit.run.resume.check_resumable) continues the run in ``run_dir`` from its last.pt.
    The run folder is locked (clfkit.run.run_folder) from its creation to the end of the run.
    ``trackers``: extra per-epoch observers besides the recipe's train.track (clfkit.run.tracking)."""
    require_trackers(recipe.train.track)  # a missing tracker package fails before the run folder exists
    with contextlib.ExitStack() as lock:
        trainer = Trainer(recipe, quiet=quiet, resume=resume)
        trainer.load_data(splits)
        trainer.build()  # before the run folder too: a bad init: file or loss.class_weights leaves nothing
        trainer.open_folder(out, run_dir, lock)
        trainer.start()
        trainer.open_trackers(trackers, lock)
        trainer.fit()
        return trainer.finish()


def resume_run(run_dir: str | Path, *, quiet: bool = False, allow_data_change: bool = False) -> RunResult:
    """Continue the run in ``run_dir`` from its ``last.pt`` (``clfkit train --resume``). The
    run folder's lock is taken before anything is read: a run still training elsewhere (or
    another resume of it) is refused, with nothing touched. Data that changed since the run
    started is refused too, unless ``allow_data_change`` (clfkit.run.data_record)."""
    run_dir = Path(run_dir)
    check_folder_resumable(run_dir)
    with run_lock(run_dir, "resume"):
        resumed = check_resumable(run_dir)
        resumed.allow_data_change = allow_data_change
        return train(resumed.recipe, run_dir=run_dir, quiet=quiet, resume=resumed)


class Trainer:
    """One training run. ``train`` calls its steps in order: load_data, build, open_folder,
    start (fresh or resumed), fit (the epochs), finish (test, summary, reports). Each step
    sets the attributes the next ones read."""

    def __init__(self, recipe: Recipe, *, quiet: bool, resume: Optional[Resumed]):
        self.t_start = time.perf_counter()
        self.recipe, self.tc, self.resume = recipe, recipe.train, resume
        self.rt = resolve_runtime(recipe)
        self.world = distributed.setup(self.rt)  # under torchrun: join the group, pin this rank's GPU
        # this rank's part of last.pt (a mid-epoch one resumes only with the world size that saved it)
        self.resume_rng, self.resume_at = (resume.for_rank(self.world.rank, self.world.size)
                                           if resume is not None else (None, None))
        distributed.check_batch_size(self.tc.batch_size, self.world.size, resume is not None)  # before the data is read or the run folder made
        if self.world.active and self.tc.freeze:  # DDP registers its gradients once, at wrap time
            raise TrainingError("train.freeze is not supported with several processes (torchrun) yet; "
                                "train in one process")
        if self.world.active and self.tc.on_nonfinite == "skip":
            # a rank skipping its step alone would desynchronize DDP's gradient all-reduce
            raise TrainingError("train.on_nonfinite: skip is not supported with several processes "
                                "(torchrun); use the default `stop`, or train in one process")
        seed_everything(recipe.seed, self.tc.deterministic)
        self.report = Reporter(self.tc.epochs, quiet or not distributed.is_main())
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
        self.history: list[dict] = []
        self.train_seconds = 0.0
        # torch.compile compiles on the first step: time that step and report it (summary
        # compile_seconds); epoch 1's seconds and images_per_s still include it
        self.compile_t0: Optional[float] = None
        self.compile_seconds: Optional[float] = None

    # ------------------------------------------------------------------ set-up
    def load_data(self, splits: Optional[Splits] = None) -> None:
        """Read the data (before the run folder exists: a data error leaves nothing behind);
        ``splits``: these instead (already read)."""
        t0 = time.perf_counter()
        with distributed.main_first():  # rank 0 fills the data cache, the others read it
            self.splits: Splits = splits if splits is not None else build_data(self.recipe)
        self.data_seconds = time.perf_counter() - t0
        self.data_check: dict[str, Any] = {}
        # said after the run's first line (open_folder): a recipe refused later prints only its error
        self.data_check_lines: list[str] = []
        self.data_check_warnings: list[str] = []
        if self.resume is None and distributed.is_main():  # duplicates, leaks, conflicts: one hash per image
            line, self.data_check = quick_check(self.splits, self.data_check_warnings.append)
            self.data_check_lines.append(line)
        if self.resume is not None:  # the labels are class indices: other classes would silently mislabel
            check_same_data(self.resume, self.splits.class_names, self.splits.in_chans, self.splits.image_size)
        # the files themselves (clfkit.run.data_record): other data would silently train on other images
        self.data_record, self.data_note = (
            check_unchanged(self.resume.run_dir, self.resume.state.get("data"), self.splits, self.recipe.data.source,
                            self.resume.allow_data_change, self.resume.epoch)
            if self.resume is not None else (data_record(self.splits), None))
        # resuming: the statistics the run started with (the init run may have changed since)
        self.mean, self.std, self.normalize_from = (stored_normalization(self.resume) if self.resume is not None
                                                    else input_normalization(self.recipe, self.splits.train))

    def open_folder(self, out: str | Path, run_dir: str | Path | None, lock: contextlib.ExitStack) -> None:
        """Create (or, resuming, reopen) the run folder and lock it for the rest of the run."""
        # only rank 0 writes the run folder; other DDP ranks get a private temp folder
        private = distributed.private_run_dir()
        self.folder = (RunFolder(private) if private else RunFolder(run_dir) if run_dir
                       else RunFolder.create(out, self.recipe.name))
        self.folder.path.mkdir(parents=True, exist_ok=True)
        if distributed.is_main():  # first, before anything in the folder is touched
            lock.enter_context(self.folder.lock("resume" if self.resume is not None else "train into"))
        if self.resume is not None and distributed.is_main():
            remove_stale_temps(self.folder.path)  # half-written files of the crash being resumed from
        if self.resume is None or not self.folder.recipe.is_file():  # resuming: written back if deleted
            self.folder.write_recipe(self.recipe.to_yaml(), __version__)
        if self.splits.skipped:
            self.folder.write_skipped(self.splits.skipped)
        if self.resume is None or self.data_note:  # the files the run (from now on) trains on
            write_manifest(self.folder, self.recipe.data.source)
        self.report.print(f"run {self.folder}  device {self.rt.device} ({self.rt.precision})  "
                          f"data: {_describe(self.splits, self.data_seconds)}")
        if self.data_note:
            self.report.print(self.data_note)
        for line in self.data_check_lines:
            self.report.print(line)
        for message in self.data_check_warnings:
            warnings.warn(message, DataCheckWarning, 2)
        for r in self.receipts:
            self.report.print(r.line())
        if self.receipts and distributed.is_main():
            self.folder.write_weights([r.to_dict() for r in self.receipts])
        for line in self.build_lines:
            self.report.print(line)

    def build(self) -> None:
        """Model, loss, optimizer, schedule, augmentation and the data on its device: the
        :class:`TrainState` the loop runs on and the :class:`TrainBatches` it reads."""
        recipe, tc, rt, splits = self.recipe, self.tc, self.rt, self.splits
        model = build_model(recipe, splits.num_classes, splits.in_chans, splits.image_size, self.mean, self.std)
        # resuming, last.pt holds the weights
        self.receipts = self._weights_in(model) if self.resume is None else []
        regularizers = build_regularizers(recipe)
        for r in regularizers:
            if hasattr(r, "on_model"):
                model = r.on_model(model) or model
        model = place_model(model, rt)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.loss_fn = build_loss(recipe, splits.num_classes, splits).to(rt.device)
        self.class_weights = getattr(self.loss_fn, "class_weights", None)
        optimizer = build_optimizer(recipe, model, regularizers)
        aug_names: dict[str, list[str]] = {}
        per_image, batched_aug = build_augmentations(recipe, aug_names)
        self.batches_per_epoch = num_batches(len(splits.train), tc.batch_size, tc.drop_last)
        self.steps_per_epoch = optimizer_steps(self.batches_per_epoch, tc.accumulate)  # what schedules count
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_schedule(recipe, self.steps_per_epoch))
        train_model = compiled(distributed.wrap(model, tc.sync_bn), tc.compile)  # DDP when launched by torchrun
        workers = recipe.data.workers if recipe.data.workers is not None else min(8, os.cpu_count() or 1)
        prep = BatchPrep(batched_aug, [r for r in regularizers if hasattr(r, "on_batch")], splits.num_classes,
                         rt.channels_last, compile=tc.compile)  # train.compile: the batch preparation too
        self.state = TrainState(rt, train_model, model, self.loss_fn, optimizer, scheduler, grad_scaler(rt), prep,
                                regularizers, tc.on_nonfinite)
        placed = place_splits(splits, rt, on_device=not per_image)  # the device's free memory decides
        train_set, self.val_set = placed.train, placed.val
        self.batches = train_batches_for(train_set, tc.batch_size, recipe.seed, drop_last=tc.drop_last, device=rt.device, per_image=per_image,
                                         workers=workers, sampler=recipe.data.sampler)  # streamed shards: StreamBatches
        # printed once the run folder is open (clfkit.train.engine.batches; the loss's class weights)
        self.build_lines = [_data_path(aug_names, rt, workers, recipe.data.sampler, train_set),
                            f"normalize ({self.normalize_from}): mean {_rounded(self.mean)} std {_rounded(self.std)}"]
        self.build_lines += [placed.note] if placed.note else []
        if self.class_weights is not None:
            self.build_lines.append(_weights_line(recipe.loss, splits.class_names, self.class_weights))
        self.eval_bs = tc.eval_batch_size or tc.batch_size * 2
        self.ckpt_base = {"recipe": recipe.to_dict(), "class_names": splits.class_names,
                          "input": {"image_size": list(splits.image_size), "channels": splits.in_chans,
                                    "mean": self.mean, "std": self.std, "resize": recipe.data.resize,
                                    "normalize_from": self.normalize_from}, "data": self.data_record}

    def _weights_in(self, model: torch.nn.Module) -> list[Any]:
        """The receipts of ``model.weights`` (loaded by the model) and ``init:`` (loaded here):
        open_folder prints one line each and writes the full lists to weights.json."""
        receipts = [r for r in [getattr(model.net, "weights_receipt", None)] if r is not None]
        if self.recipe.init:
            receipts.append(load_init(model, self.recipe.init, self.recipe.init_min_match, self.splits.class_names))
        return receipts

    def start(self) -> None:
        """Fresh run: the parity samples. Resumed run: every state as last.pt saved it."""
        tc, state = self.tc, self.state
        if self.resume is None:
            src = self.splits.val if self.splits.val is not None and len(self.splits.val) else self.splits.train
            self.folder.write_samples(src.images[:64].numpy())  # for the exporter's parity check
        state.ema = WeightEMA(state.net, tc.ema) if tc.ema else None  # val, best.pt and test use it
        self.stopper = EarlyStopper(tc.early_stopping, bool(self.splits.val)) if tc.early_stopping else None
        # Objects with state_dict()/load_state_dict() that last.pt must carry (EMA, early
        # stopping, ...): add them here under a stable key and resume restores them.
        self.resumable = {k: v for k, v in {"ema": state.ema, "early_stopping": self.stopper}.items() if v is not None}
        self.start_epoch = 0
        if self.resume is None:
            return
        resume = self.resume
        restore(resume, model=state.net, optimizer=state.optimizer, scheduler=state.scheduler, scaler=state.scaler,
                extra=self.resumable)
        self.best, self.history, state.step = dict(resume.state["best"]), list(resume.history), int(resume.state["step"])
        self.start_epoch = resume.epoch
        self.folder.rewrite_metrics(self.history)  # drop a metrics line written after last.pt (a crash between the two)
        if self.resume_at is None:
            set_rng_state(self.resume_rng)
        self.report.print(f"resuming {self.folder} at epoch {self.start_epoch + 1}" + (
            f", batch {self.resume_at.batch + 1}" if self.resume_at else "") + f" (step {state.step})")

    def open_trackers(self, extra: tuple[Any, ...], lock: contextlib.ExitStack) -> None:
        """The recipe's trackers (TensorBoard, MLflow) plus ``extra`` observers (a tune pruner);
        closed with the run, after finish() has logged the summary to them."""
        self.trackers = open_trackers(self.recipe.train.track, self.folder.path, self.recipe.to_dict(),
                                      self.start_epoch, extra, main=distributed.is_main())
        lock.callback(self.trackers.close)

    # ------------------------------------------------------------------ the epochs
    def fit(self) -> None:
        """Train from start_epoch to train.epochs (or an early stop); a stop signal saves last.pt
        and raises Interrupted."""
        with catch_stop_signals() as self.stop, contextlib.closing(self.report), \
                contextlib.closing(MetricsLog(self.folder.path, self.start_epoch, self.trackers)) as self.metrics_log:
            for epoch in range(self.start_epoch, self.tc.epochs):
                if self._epoch(epoch):
                    self.report.print(self.stopper.describe())
                    break

    def _epoch(self, epoch: int) -> bool:
        """Train and validate epoch ``epoch`` (0-based), record it, checkpoint; True: stop early."""
        tc, state = self.tc, self.state
        t0 = time.perf_counter()
        progress = self.report.start_epoch(epoch, len(self.splits.train))
        self.epoch, self.epoch_lr = epoch, base_lr(state.optimizer)  # the recipe's lr, whatever the groups
        if tc.freeze:  # a function of the epoch alone: a resume freezes exactly as the run did
            state.frozen_norms = set_backbone_frozen(
                getattr(state.net, "net", state.net), frozen_in_epoch(tc.freeze, tc.unfreeze_epoch, epoch))
        if self.resume_at is not None and self.resume_at.lr is not None:
            self.epoch_lr = self.resume_at.lr  # the row reports the LR the epoch started with
        row: dict[str, Any] = {"epoch": epoch + 1}
        if tc.compile and self.compile_t0 is None:
            self.compile_t0 = time.perf_counter()
        row.update(self._train_epoch(epoch, progress))
        self.resume_at = None
        t_train = time.perf_counter() - t0
        self.train_seconds += t_train
        if self.val_set is not None:
            ev = evaluate(state.eval_model, self.val_set, rt=self.rt, loss_fn=self.loss_fn,
                          num_classes=self.splits.num_classes, batch_size=self.eval_bs)
            row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            if ev["top5_acc"] is not None:
                row["val_top5_acc"] = ev["top5_acc"]
        n_train = self.batches.images_per_epoch()  # drop_last's dropped images are not trained on
        row.update(lr=self.epoch_lr, seconds=round(time.perf_counter() - t0, 3),
                   images_per_s=round(n_train / max(t_train, 1e-9), 1), step=state.step)
        self._record(row)
        early_stop = self.stopper is not None and self.stopper.update(row)
        self._save_last(epoch + 1, None, row)
        if distributed.stop_agreed(self.stop):  # every epoch end, on every rank
            raise Interrupted(self._stop_message(f"at the end of epoch {epoch + 1}"), self.stop.signum)
        return early_stop

    def _record(self, row: dict[str, Any]) -> None:
        """The epoch's metrics row into the history, the logs and the console; best.pt when it
        becomes the best epoch (clfkit.run.reader.replaces_best: best val acc, or the last)."""
        self.history.append(row)
        self.folder.append_metrics(row)
        self.metrics_log.write(row)
        self.report.end_epoch(row)
        if replaces_best(row, self.best.get("row")):
            self.best = {"val_acc": row.get("val_acc"), "epoch": row["epoch"], "row": row}
            save_checkpoint(self.folder.best, {**self.ckpt_base, "model": self.state.eval_model.state_dict(),
                                               "epoch": row["epoch"], "metrics": row})

    def _train_epoch(self, epoch: int, progress: Callable[[int], None]) -> dict[str, float]:
        """train_one_epoch; an error raised after a stop signal came is the signal's doing: Ctrl-C
        reaches the whole process group, and a compiler torch.compile runs (g++ building the
        first step) dies of it mid-build. That stop is Interrupted, not a traceback."""
        try:
            return train_one_epoch(self.state, self.batches, epoch, progress=progress, resume_at=self.resume_at,
                                   after_step=self._after_step, accumulate=self.tc.accumulate)
        except Exception as e:
            if not self.stop.pending or isinstance(e, Interrupted):  # Interrupted: the step ended, last.pt saved
                raise
            # nothing is saved now: the broken step may have run part of its work (a forward
            # pass updates BatchNorm statistics), so no state of this moment resumes exactly
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"
            then = (f"resume from the last checkpoint with: "
                    f"{distributed.launch_command(f'train --resume {self.folder}')}" if self.folder.last.exists()
                    else f"no checkpoint was saved yet; remove {self.folder} and run the same command again")
            raise Interrupted(f"{self.stop.name} received: stopped in epoch {epoch + 1} at step {self.state.step} "
                              f"while a step was running ({why}; the signal stops the compiler torch.compile "
                              f"runs too); {then}", self.stop.signum) from None

    def _after_step(self, batch: int, snapshot: Callable[[], EpochProgress]) -> None:
        """After every optimizer step: compile timing, EMA, and a mid-epoch last.pt when due
        (train.checkpoint_every_steps) or when a stop signal came."""
        state, tc = self.state, self.tc
        if self.compile_t0 is not None and self.compile_seconds is None:
            if self.rt.device.type == "cuda":
                torch.cuda.synchronize(self.rt.device)
            self.compile_seconds = round(time.perf_counter() - self.compile_t0, 2)
            self.report.print(f"torch.compile: first step took {self.compile_seconds:.1f}s (compilation included)")
        if state.ema is not None:
            state.ema.update(state.step)
        # one process: the signal flag, every step; DDP: all ranks agree every few steps
        stopping = distributed.stop_agreed(self.stop, state.step)
        # the last batch of an epoch is followed by the epoch-end checkpoint anyway
        due = tc.checkpoint_every_steps is not None and state.step % tc.checkpoint_every_steps == 0
        if not (due or stopping) or batch >= self.batches_per_epoch:
            return
        in_epoch = snapshot()
        in_epoch.lr = self.epoch_lr
        self._save_last(self.epoch, in_epoch)
        if stopping:
            where = f"in epoch {self.epoch + 1} after batch {batch}/{self.batches_per_epoch}"
            raise Interrupted(self._stop_message(where), self.stop.signum)

    def _save_last(self, epochs_done: int, in_epoch: Optional[EpochProgress], row: Optional[dict] = None) -> None:
        state = self.state
        save_checkpoint(self.folder.last, {
            **self.ckpt_base, "model": state.net.state_dict(), "metrics": row,
            **training_state(epoch=epochs_done, step=state.step, progress=in_epoch, optimizer=state.optimizer,
                             scheduler=state.scheduler, scaler=state.scaler, best=self.best, history=self.history,
                             extra=self.resumable)})

    def _stop_message(self, where: str) -> str:
        step = self.state.step
        if not distributed.is_main():  # its last.pt is a private copy; rank 0's message says what to do
            return f"rank {self.world.rank}: {self.stop.name}: stopped with the other ranks {where}, step {step}"
        return (f"{self.stop.name} received: stopped {where}, step {step}; saved {self.folder.last}.\n"
                f"Resume with: {distributed.launch_command(f'train --resume {self.folder}')}")

    # ------------------------------------------------------------------ the end
    def finish(self) -> RunResult:
        """Test best.pt, write summary.json (the run is finished from then on) and the reports."""
        summary = self._summary()
        # a resumed DDP rank's private folder lacks the best.pt of epochs before the resume: every
        # rank reads rank 0's (written before the last checkpoint's gather, which they all passed)
        best_pt = RunFolder(self.resume.run_dir).best if self.resume is not None else self.folder.best
        summary.update(evaluate_best(best_pt, self.state.net, self.splits, self.val_set, rt=self.rt,
                                     loss_fn=self.loss_fn, batch_size=self.eval_bs))
        if summary.get("eval_split") and distributed.is_main():  # the net holds best.pt: its surest errors
            data = self.splits.test if summary["eval_split"] == "test" else self.val_set
            write_mistakes(self.folder.path, self.state.net, data, split=summary["eval_split"], rt=self.rt,
                           class_names=self.splits.class_names, batch_size=self.eval_bs)
            # calibration of val and test, Grad-CAM of the evaluated split (clfkit.run.insight)
            summary.update(write_insight(self.folder.path, self.state.net, {"val": self.val_set, "test": self.splits.test},
                                         eval_split=summary["eval_split"], rt=self.rt, class_names=self.splits.class_names, batch_size=self.eval_bs))
        summary["wall_seconds"] = round(time.perf_counter() - self.t_start, 2)
        self.folder.write_summary(summary)
        write_run_reports(self.folder.path)  # curves.png, per_class.csv, confusion.png (clfkit.run.per_class)
        write_run_report(self.folder.path)  # report.html (clfkit.run.report_page)
        self.trackers.finish(self.folder.path, summary)  # MLflow: the summary and the report files
        self.report.print(_done_message(summary) + f"  -> {self.folder}")
        return RunResult(self.folder.path, summary)

    def _summary(self) -> dict[str, Any]:
        """summary.json's fields known when the epochs are over (the test fields come next)."""
        rt, splits, best_row, stopper = self.rt, self.splits, self.best["row"], self.stopper
        return {
            "name": self.recipe.name, "run_dir": str(self.folder), "epochs": self.tc.epochs,
            "best_epoch": self.best["epoch"], "best_val_acc": best_row.get("val_acc"),
            "selected_on": selected_on(best_row), "train_acc_at_best": best_row["train_acc"],
            "params": self.n_params,
            "device": str(rt.device) + (f" ({torch.cuda.get_device_name(rt.device)})" if rt.device.type == "cuda" else ""),
            "precision": rt.precision, "num_classes": splits.num_classes, "class_names": splits.class_names,
            "train_images": len(splits.train), "val_images": len(splits.val) if splits.val else 0,
            "test_acc": None, "test_top5_acc": None, "test_loss": None, "skipped_files": len(splits.skipped),
            "data_seconds": round(self.data_seconds, 2), "train_seconds": round(self.train_seconds, 2),
            "compile_seconds": self.compile_seconds,
            # as used, and where from (the train split, the init run, the recipe)
            "normalize": {"mean": self.mean, "std": self.std, "from": self.normalize_from},
            "data_check": self.data_check,  # exact duplicates, leaks, conflicts (clfkit.data.audit.quick)
            "data": self.data_record,  # its fingerprint, and any resume on changed data (--allow-data-change)
            "class_weights": self.class_weights, "sampler": self.recipe.data.sampler,
            "clfkit_version": __version__, "epochs_run": len(self.history), "ema": self.state.ema is not None,
            "stopped_early_at": stopper.stopped_epoch if stopper and stopper.stopped_epoch else None,
        }


def _done_message(summary: dict[str, Any]) -> str:
    """The run's last console line (less the run folder)."""
    if summary["best_val_acc"] is not None:
        msg = (f"done in {summary['wall_seconds']:.0f}s: best val acc {summary['best_val_acc']:.4f} "
               f"(epoch {summary['best_epoch']})")
    else:  # never call train accuracy "val"
        msg = (f"done in {summary['wall_seconds']:.0f}s: no val split, so best.pt is the last epoch "
               f"({summary['best_epoch']}, train acc {summary['train_acc_at_best']:.4f})")
    if summary["test_acc"] is not None:
        msg += f", test acc {summary['test_acc']:.4f}"
    return msg


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def _weights_line(loss: dict, class_names: list[str], weights: list[float]) -> str:
    """The run log's record of loss.class_weights (summary.json keeps the list too)."""
    how = "balanced: n / (classes x train count)" if loss.get("class_weights") == "balanced" else "as given"
    return f"loss class weights ({how}): " + ", ".join(f"{n} {w:.3g}" for n, w in zip(class_names, weights))


def _data_path(names: dict[str, list[str]], rt: Runtime, workers: int, sampler: str = "shuffle",
               train: Optional[ImageSet] = None) -> str:
    """Which input path the run takes, for the log: a transform without a batched version
    sends every batch through CPU loader workers, and users should see that."""
    per_image, batched = names.get("per_image", []), names.get("batched", [])
    on_host = per_image or rt.device.type == "cpu" or (train is not None and train.images.device.type == "cpu")
    where = "host memory" if on_host else f"{rt.device.type} memory"
    line = f"data path: uint8 tensors in {where}"
    if getattr(train, "streamed", False):  # clfkit.data.streamed
        line = f"data path: {train.describe()}"
    elif train is not None and storage.is_disk(train.images):
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
    return (f"{splits.description}: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
            f"{len(splits.test) if splits.test else 0} test, {splits.num_classes} classes, "
            f"{splits.in_chans}x{splits.image_size[0]}x{splits.image_size[1]} (loaded in {data_seconds:.1f}s)"
            + (f", {len(splits.skipped)} unreadable file(s) skipped, listed in skipped.txt"
               if splits.skipped else ""))
