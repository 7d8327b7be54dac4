"""The trainer: recipe in, run folder out.

Reads top to bottom: set up (device, precision, data, model: clfkit.train.prepare, each step a
function returning a frozen record) -> for each epoch ``train_one_epoch`` then ``evaluate`` ->
checkpoints and metrics -> final test evaluation and ``summary.json``. Data lives in memory as
uint8 tensors (see clfkit.data); on CUDA the whole train split moves to the GPU and batched
augmentation runs there. Metrics are accumulated on the device and read once per epoch, so the
step loop never waits for the host.

What it assembles: clfkit.train.engine (runtime, batches, the loop, DDP, EMA, early stopping),
clfkit.run.evaluation (``evaluate``), clfkit.run (the run folder, checkpoints, resume state,
metrics log, reports). The files of a run folder: clfkit.run.run_folder.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from clfkit import __version__
from clfkit.data import Splits
from clfkit.recipe import Recipe
from clfkit.run.checkpoint import save_checkpoint
from clfkit.run.evaluation import evaluate, evaluate_best
from clfkit.run.insight import write_insight
from clfkit.run.metrics_log import MetricsLog
from clfkit.run.misclassified import write_mistakes
from clfkit.run.per_class import write_run_reports
from clfkit.run.reader import replaces_best, selected_on
from clfkit.run.report_page import write_run_report
from clfkit.run.resume import Resumed, check_folder_resumable, check_resumable, training_state
from clfkit.run.run_folder import RunFolder, run_lock
from clfkit.run.tracking import open_trackers, require_trackers
from clfkit.train import prepare
from clfkit.train.engine import distributed
from clfkit.train.engine.freeze import frozen_in_epoch, set_backbone_frozen
from clfkit.train.engine.loop import train_one_epoch
from clfkit.train.engine.snapshot import EpochProgress
from clfkit.train.param_groups import base_lr
from clfkit.util.signals import Interrupted, StopFlag, catch_stop_signals


@dataclass
class RunResult:
    """The run folder a training wrote, and its summary.json."""

    run_dir: Path
    summary: dict[str, Any]


def train(
    recipe: Recipe,
    out: str | Path = "runs",
    *,
    quiet: bool = False,
    run_dir: str | Path | None = None,
    resume: Optional[Resumed] = None,
    trackers: tuple[Any, ...] = (),
    splits: Optional[Splits] = None,
) -> RunResult:
    """Train ``recipe``; write everything into a new run folder under ``out``. ``splits``: train
    on these instead of the recipe's data (``clfkit data check --folds``: one fold each). ``resume``
    (from clfkit.run.resume.check_resumable) continues the run in ``run_dir`` from its last.pt.
    The run folder is locked (clfkit.run.run_folder) from its creation to the end of the run.
    ``trackers``: extra per-epoch observers besides the recipe's train.track (clfkit.run.tracking)."""
    require_trackers(recipe.train.track)  # a missing tracker package fails before the run folder exists
    t_start = time.perf_counter()
    with contextlib.ExitStack() as lock:
        setup = prepare.set_up(recipe, quiet=quiet, resume=resume)
        data = prepare.load_data(recipe, resume, splits)
        built = prepare.build(recipe, setup.rt, data, resume)  # before the run folder too
        folder = prepare.open_folder(
            recipe, setup, data, built, out=out, run_dir=run_dir, resume=resume, lock=lock
        )
        start = prepare.start(recipe, setup, data, built, folder, resume)
        # the recipe's trackers (TensorBoard, MLflow) plus ``trackers`` (a tune pruner); closed with
        # the run, after finish() has logged the summary to them
        run_trackers = open_trackers(
            recipe.train.track,
            folder.path,
            recipe.to_dict(),
            start.epoch,
            trackers,
            main=distributed.is_main(),
        )
        lock.callback(run_trackers.close)
        trainer = Trainer(
            recipe,
            setup=setup,
            data=data,
            built=built,
            folder=folder,
            start=start,
            trackers=run_trackers,
            resume=resume,
            t_start=t_start,
        )
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
    """The epochs of one run and its end, over the records the set-up steps returned
    (clfkit.train.prepare). Every attribute is set here; the epochs change only the run's
    progress (best, history, timings, the epoch being trained)."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        setup: prepare.RunSetup,
        data: prepare.RunData,
        built: prepare.Built,
        folder: RunFolder,
        start: prepare.Start,
        trackers: Any,
        resume: Optional[Resumed],
        t_start: float,
    ):
        self.recipe, self.tc, self.resume, self.t_start = recipe, recipe.train, resume, t_start
        self.setup, self.data, self.built, self.folder, self.trackers = setup, data, built, folder, trackers
        self.rt, self.report, self.splits, self.state = setup.rt, setup.report, data.splits, built.state
        self.start_epoch, self.stopper, self.resumable = start.epoch, start.stopper, start.resumable
        self.best, self.history = start.best, start.history
        self.resume_at: Optional[EpochProgress] = setup.resume_at  # until the resumed epoch is trained
        self.train_seconds = 0.0
        # torch.compile compiles on the first step: time that step and report it (summary
        # compile_seconds); epoch 1's seconds and images_per_s still include it
        self.compile_t0: Optional[float] = None
        self.compile_seconds: Optional[float] = None
        self.epoch, self.epoch_lr = start.epoch, 0.0  # the epoch being trained, the lr it started with
        # fit() opens them for the epochs (a signal handler, the metrics files)
        self.stop: Optional[StopFlag] = None
        self.metrics_log: Optional[MetricsLog] = None

    # ------------------------------------------------------------------ the epochs
    def fit(self) -> None:
        """Train from start_epoch to train.epochs (or an early stop); a stop signal saves last.pt
        and raises Interrupted."""
        with (
            catch_stop_signals() as stop,
            contextlib.closing(self.report),
            contextlib.closing(MetricsLog(self.folder.path, self.start_epoch, self.trackers)) as metrics_log,
        ):
            self.stop, self.metrics_log = stop, metrics_log
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
                getattr(state.net, "net", state.net), frozen_in_epoch(tc.freeze, tc.unfreeze_epoch, epoch)
            )
        if self.resume_at is not None and self.resume_at.lr is not None:
            self.epoch_lr = self.resume_at.lr  # the row reports the LR the epoch started with
        row: dict[str, Any] = {"epoch": epoch + 1}
        if tc.compile and self.compile_t0 is None:
            self.compile_t0 = time.perf_counter()
        row.update(self._train_epoch(epoch, progress))
        self.resume_at = None
        t_train = time.perf_counter() - t0
        self.train_seconds += t_train
        if self.built.val_set is not None:
            ev = evaluate(
                state.eval_model,
                self.built.val_set,
                rt=self.rt,
                loss_fn=self.state.loss_fn,
                num_classes=self.splits.num_classes,
                batch_size=self.built.eval_batch_size,
            )
            row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            if ev["top5_acc"] is not None:
                row["val_top5_acc"] = ev["top5_acc"]
        n_train = self.built.batches.images_per_epoch()  # drop_last's dropped images are not trained on
        row.update(
            lr=self.epoch_lr,
            seconds=round(time.perf_counter() - t0, 3),
            images_per_s=round(n_train / max(t_train, 1e-9), 1),
            step=state.step,
        )
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
            save_checkpoint(
                self.folder.best,
                {
                    **self.built.checkpoint_base,
                    "model": self.state.eval_model.state_dict(),
                    "epoch": row["epoch"],
                    "metrics": row,
                },
            )

    def _train_epoch(self, epoch: int, progress: Callable[[int], None]) -> dict[str, float]:
        """train_one_epoch; an error raised after a stop signal came is the signal's doing: Ctrl-C
        reaches the whole process group, and a compiler torch.compile runs (g++ building the
        first step) dies of it mid-build. That stop is Interrupted, not a traceback."""
        try:
            return train_one_epoch(
                self.state,
                self.built.batches,
                epoch,
                progress=progress,
                resume_at=self.resume_at,
                after_step=self._after_step,
                accumulate=self.tc.accumulate,
            )
        except Exception as e:
            if not self.stop.pending or isinstance(
                e, Interrupted
            ):  # Interrupted: the step ended, last.pt saved
                raise
            # nothing is saved now: the broken step may have run part of its work (a forward
            # pass updates BatchNorm statistics), so no state of this moment resumes exactly
            why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:120]}"
            then = (
                f"resume from the last checkpoint with: "
                f"{distributed.launch_command(f'train --resume {self.folder}')}"
                if self.folder.last.exists()
                else f"no checkpoint was saved yet; remove {self.folder} and run the same command again"
            )
            raise Interrupted(
                f"{self.stop.name} received: stopped in epoch {epoch + 1} at step {self.state.step} "
                f"while a step was running ({why}; the signal stops the compiler torch.compile "
                f"runs too); {then}",
                self.stop.signum,
            ) from None

    def _after_step(self, batch: int, snapshot: Callable[[], EpochProgress]) -> None:
        """After every optimizer step: compile timing, EMA, and a mid-epoch last.pt when due
        (train.checkpoint_every_steps) or when a stop signal came."""
        state, tc = self.state, self.tc
        if self.compile_t0 is not None and self.compile_seconds is None:
            if self.rt.device.type == "cuda":
                torch.cuda.synchronize(self.rt.device)
            self.compile_seconds = round(time.perf_counter() - self.compile_t0, 2)
            self.report.print(
                f"torch.compile: first step took {self.compile_seconds:.1f}s (compilation included)"
            )
        if state.ema is not None:
            state.ema.update(state.step)
        # one process: the signal flag, every step; DDP: all ranks agree every few steps
        stopping = distributed.stop_agreed(self.stop, state.step)
        # the last batch of an epoch is followed by the epoch-end checkpoint anyway
        due = tc.checkpoint_every_steps is not None and state.step % tc.checkpoint_every_steps == 0
        if not (due or stopping) or batch >= self.built.batches_per_epoch:
            return
        in_epoch = snapshot()
        in_epoch.lr = self.epoch_lr
        self._save_last(self.epoch, in_epoch)
        if stopping:
            where = f"in epoch {self.epoch + 1} after batch {batch}/{self.built.batches_per_epoch}"
            raise Interrupted(self._stop_message(where), self.stop.signum)

    def _save_last(
        self, epochs_done: int, in_epoch: Optional[EpochProgress], row: Optional[dict] = None
    ) -> None:
        state = self.state
        save_checkpoint(
            self.folder.last,
            {
                **self.built.checkpoint_base,
                "model": state.net.state_dict(),
                "metrics": row,
                **training_state(
                    epoch=epochs_done,
                    step=state.step,
                    progress=in_epoch,
                    optimizer=state.optimizer,
                    scheduler=state.scheduler,
                    scaler=state.scaler,
                    best=self.best,
                    history=self.history,
                    extra=self.resumable,
                ),
            },
        )

    def _stop_message(self, where: str) -> str:
        step = self.state.step
        if not distributed.is_main():  # its last.pt is a private copy; rank 0's message says what to do
            return f"rank {self.setup.world.rank}: {self.stop.name}: stopped with the other ranks {where}, step {step}"
        return (
            f"{self.stop.name} received: stopped {where}, step {step}; saved {self.folder.last}.\n"
            f"Resume with: {distributed.launch_command(f'train --resume {self.folder}')}"
        )

    # ------------------------------------------------------------------ the end
    def finish(self) -> RunResult:
        """Test best.pt, write summary.json (the run is finished from then on) and the reports."""
        summary = self._summary()
        # a resumed DDP rank's private folder lacks the best.pt of epochs before the resume: every
        # rank reads rank 0's (written before the last checkpoint's gather, which they all passed)
        best_pt = RunFolder(self.resume.run_dir).best if self.resume is not None else self.folder.best
        summary.update(
            evaluate_best(
                best_pt,
                self.state.net,
                self.splits,
                self.built.val_set,
                rt=self.rt,
                loss_fn=self.state.loss_fn,
                batch_size=self.built.eval_batch_size,
            )
        )
        if summary.get("eval_split") and distributed.is_main():  # the net holds best.pt: its surest errors
            data = self.splits.test if summary["eval_split"] == "test" else self.built.val_set
            write_mistakes(
                self.folder.path,
                self.state.net,
                data,
                split=summary["eval_split"],
                rt=self.rt,
                class_names=self.splits.class_names,
                batch_size=self.built.eval_batch_size,
            )
            # calibration of val and test, Grad-CAM of the evaluated split (clfkit.run.insight)
            summary.update(
                write_insight(
                    self.folder.path,
                    self.state.net,
                    {"val": self.built.val_set, "test": self.splits.test},
                    eval_split=summary["eval_split"],
                    rt=self.rt,
                    class_names=self.splits.class_names,
                    batch_size=self.built.eval_batch_size,
                )
            )
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
            "name": self.recipe.name,
            "run_dir": str(self.folder),
            "epochs": self.tc.epochs,
            "best_epoch": self.best["epoch"],
            "best_val_acc": best_row.get("val_acc"),
            "selected_on": selected_on(best_row),
            "train_acc_at_best": best_row["train_acc"],
            "params": self.built.n_params,
            "device": str(rt.device)
            + (f" ({torch.cuda.get_device_name(rt.device)})" if rt.device.type == "cuda" else ""),
            "precision": rt.precision,
            "num_classes": splits.num_classes,
            "class_names": splits.class_names,
            "train_images": len(splits.train),
            "val_images": len(splits.val) if splits.val else 0,
            "test_acc": None,
            "test_top5_acc": None,
            "test_loss": None,
            "skipped_files": len(splits.skipped),
            "data_seconds": round(self.data.seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "compile_seconds": self.compile_seconds,
            # as used, and where from (the train split, the init run, the recipe)
            "normalize": {"mean": self.data.mean, "std": self.data.std, "from": self.data.normalize_from},
            "data_check": self.data.check,  # exact duplicates, leaks, conflicts (clfkit.data.audit.quick)
            "data": self.data.record,  # its fingerprint, and any resume on changed data (--allow-data-change)
            "class_weights": self.built.class_weights,
            "sampler": self.recipe.data.sampler,
            "clfkit_version": __version__,
            "epochs_run": len(self.history),
            "ema": self.state.ema is not None,
            "stopped_early_at": stopper.stopped_epoch if stopper and stopper.stopped_epoch else None,
        }


def _done_message(summary: dict[str, Any]) -> str:
    """The run's last console line (less the run folder)."""
    if summary["best_val_acc"] is not None:
        msg = (
            f"done in {summary['wall_seconds']:.0f}s: best val acc {summary['best_val_acc']:.4f} "
            f"(epoch {summary['best_epoch']})"
        )
    else:  # never call train accuracy "val"
        msg = (
            f"done in {summary['wall_seconds']:.0f}s: no val split, so best.pt is the last epoch "
            f"({summary['best_epoch']}, train acc {summary['train_acc_at_best']:.4f})"
        )
    if summary["test_acc"] is not None:
        msg += f", test acc {summary['test_acc']:.4f}"
    return msg
