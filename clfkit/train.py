"""The trainer: recipe in, run folder out.

Reads top to bottom: set up (device, precision, data, model) -> for each epoch
``train_one_epoch`` then ``evaluate`` -> checkpoints and metrics -> final test evaluation and
``summary.json``. Data lives in memory as uint8 tensors (see clfkit.data); on CUDA the whole
train split moves to the GPU and batched augmentation runs there. Metrics are accumulated on
the device and read once per epoch, so the step loop never waits for the host.

Run folder::

    runs/<name>/
      recipe.yaml      the resolved recipe (every default filled in)
      metrics.jsonl    one JSON line per epoch (metrics.csv: the same rows; tensorboard/: event
                       files when tensorboard is installed)
      best.pt last.pt  checkpoints (weights + recipe + class names + input spec)
      summary.json     best_val_acc, best_epoch, test_acc, per-class test accuracy, ...
      skipped.txt      images that could not be decoded (when any)
      curves.png       loss and accuracy per epoch, train vs val (clfkit.evaluate)
      per_class.csv    accuracy, precision, recall, f1, support per class on the test split
      confusion.png    row-normalized confusion matrix (val split when there is no labelled test)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn

from clfkit import __version__, distributed
from clfkit.build import (build_augmentations, build_data, build_loss, build_model, build_optimizer,
                          build_regularizers, build_schedule, normalization)
from clfkit.checkpoint import load_checkpoint, load_weights, save_checkpoint
from clfkit.data import ImageSet, Splits
from clfkit.errors import TrainingError
from clfkit.io import append_line, atomic_open, remove_stale_temps, write_json, write_text
from clfkit.locks import run_lock
from clfkit.recipe import Recipe
from clfkit.resume import EpochProgress, Resumed, restore, set_rng_state, training_state
from clfkit.signals import Interrupted, catch_stop_signals
from clfkit.ema import WeightEMA
from clfkit.evaluate import per_class, write_run_reports
from clfkit.logs import MetricsLog
from clfkit.mistakes import write_mistakes
from clfkit.report_html import write_run_report
from clfkit.tracking import open_trackers, require_trackers
from clfkit.runs import describe_class_change, replaces_best, selected_on
from clfkit.stopping import EarlyStopper


# --------------------------------------------------------------------------- device & precision
@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    channels_last: bool

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def resolve_runtime(recipe: Recipe) -> Runtime:
    """Pick device and precision; asking for what the machine lacks is a clear error."""
    t = recipe.train
    want = t.device
    if want == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif want.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError(f"train.device is {want!r} but no CUDA GPU is available here; "
                                f"use train.device=auto or cpu")
        device = torch.device(want)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainingError(f"train.device {want!r}: only {torch.cuda.device_count()} GPU(s)")
    else:
        device = torch.device("cpu")
    precision = t.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise TrainingError(f"train.precision {precision} needs a CUDA GPU; this run is on the CPU, "
                            f"where clfkit trains in fp32 (set train.precision=fp32 or auto)")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise TrainingError("train.precision bf16: this GPU does not support bfloat16; use fp16")
    channels_last = t.channels_last if t.channels_last is not None else device.type == "cuda"
    return Runtime(device, precision, channels_last)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------- batches
class PerImage(torch.utils.data.Dataset):
    """uint8 tensors through albumentations-style per-image transforms (CPU workers)."""

    def __init__(self, data: ImageSet, transforms: list[Any], seed: int = 0):
        self.data, self.transforms, self.seed = data, transforms, seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        img = self.data.images[i].permute(1, 2, 0).numpy()
        for k, t in enumerate(self.transforms):
            if hasattr(t, "set_random_seed"):
                # albumentations draws from the transform's own generator, seeded from OS
                # entropy: reseed per (run seed, epoch, image, transform) so runs repeat and a
                # resume need not replay the loader, whatever the worker count
                t.set_random_seed((self.seed * 1_000_003 + i) * 101 + k)
            img = t(image=img)["image"]
        img = np.ascontiguousarray(img)
        if img.ndim == 2:
            img = img[:, :, None]
        return torch.from_numpy(img).permute(2, 0, 1), self.data.labels[i]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: a pure function of (seed, epoch), so a resumed
    run sees exactly the batches an uninterrupted one would."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in an epoch of ``n`` images. drop_last drops a last partial batch, but never the
    only one (a split smaller than the batch still trains)."""
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def train_batches(data: ImageSet, batch_size: int, seed: int, epoch: int, drop_last: bool,
                  device: torch.device, per_image: list[Any], workers: int,
                  start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches on ``device`` in this epoch's order, from batch
    ``start_batch`` on (a resumed epoch)."""
    order = epoch_order(len(data), seed, epoch)
    order, batch_size = distributed.shard_order(order, batch_size, drop_last)  # DDP: this rank's part
    # the epoch's batches, less those a resumed epoch has already trained on
    order = order[start_batch * batch_size:num_batches(len(order), batch_size, drop_last) * batch_size]
    if per_image:
        loader = torch.utils.data.DataLoader(
            PerImage(data, per_image, seed * 100003 + epoch), batch_size=batch_size, sampler=order.tolist(),
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # workers' seeds from (seed, epoch): creating the loader must not draw from the
            # global generator, which a mid-epoch resume has just restored
            generator=torch.Generator().manual_seed(seed * 100003 + epoch + 7))
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    order = order.to(data.images.device)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield (data.images.index_select(0, idx).to(device, non_blocking=True),
               data.labels.index_select(0, idx).to(device, non_blocking=True))


def eval_batches(data: ImageSet, batch_size: int, device: torch.device):
    for i in range(0, len(data), batch_size):
        x = data.images[i:i + batch_size].to(device, non_blocking=True)
        y = data.labels[i:i + batch_size].to(device, non_blocking=True) if data.labels is not None else None
        yield x, y


# --------------------------------------------------------------------------- one epoch
@dataclass
class StepState:
    step: int = 0                 # optimizer steps taken so far in the run
    warned_probs: bool = False


def _looks_like_probabilities(out: torch.Tensor) -> bool:
    out = out.detach().float()
    return bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3))


def train_one_epoch(model: nn.Module, data: ImageSet, *, rt: Runtime, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, scaler, regularizers: list[Any],
                    batched_aug: list[Any], num_classes: int, batch_size: int, seed: int, epoch: int,
                    drop_last: bool, per_image: list[Any], workers: int, state: StepState,
                    progress: Callable[[int], None], on_nonfinite: str = "stop",
                    resume_at: Optional[EpochProgress] = None,
                    after_step: Optional[Callable[[int, Callable[[], EpochProgress]], None]] = None,
                    ) -> dict[str, float]:
    """One pass over the training split. Returns mean loss and accuracy (one host sync).

    ``resume_at``: continue a half-done epoch (see clfkit.resume). ``after_step(batch,
    snapshot)`` runs after every optimizer step; ``snapshot()`` (which syncs) captures the
    epoch's position for a mid-epoch checkpoint."""
    model.train()
    loss_sum = torch.zeros((), device=rt.device)
    correct = torch.zeros((), device=rt.device)
    seen = 0
    gen = torch.Generator(device=rt.device).manual_seed(distributed.rank_seed(seed * 7919 + epoch))  # augmentation draws
    guard = NonFiniteGuard(rt, on_nonfinite, epoch, optimizer)
    start = 0
    if resume_at is not None:
        start, seen = resume_at.batch, resume_at.seen
        loss_sum += resume_at.loss_sum
        correct += resume_at.correct
        guard.skipped = resume_at.nonfinite

    def snapshot(batch: int) -> EpochProgress:
        guard.check(state.step)  # never checkpoint weights a non-finite step has touched
        # this rank's own sums and generator: each rank restores its own (clfkit.resume)
        return EpochProgress(batch=batch, aug_rng=gen.get_state(), loss_sum=float(loss_sum),
                             correct=float(correct), seen=seen, nonfinite=guard.skipped)
    on_batch = [r for r in regularizers if hasattr(r, "on_batch")]
    on_loss = [r for r in regularizers if hasattr(r, "on_loss")]
    before_step = [r for r in regularizers if hasattr(r, "before_step")]
    if resume_at is not None:  # every generator as it was at the checkpoint
        set_rng_state(resume_at.rng)
        gen.set_state(resume_at.aug_rng)
    for i, (x, y) in enumerate(train_batches(data, batch_size, seed, epoch, drop_last, rt.device, per_image,
                                             workers, start_batch=start), start=start):
        x = x.float()
        for t in batched_aug:
            x = t(x, gen)
        target = y
        for r in on_batch:
            x, target = r.on_batch(x, target, num_classes)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out = model(x)
            loss = loss_fn(out, target)
        for r in on_loss:
            loss = r.on_loss(loss, model)
        if not state.warned_probs:  # the first batch only: one host sync per run
            state.warned_probs = True
            if _looks_like_probabilities(out):
                warnings.warn(
                    "the model's outputs on the first batch are already probabilities (non-negative, "
                    "rows sum to 1): the model probably ends in softmax. clfkit's losses expect raw "
                    "logits (cross_entropy applies log-softmax itself, so a second softmax flattens the "
                    "gradients and trains badly). Remove the final softmax from the model.", stacklevel=2)
        optimizer.zero_grad(set_to_none=True)
        if not guard.ok(loss, state.step + 1, i + 1):  # on_nonfinite: skip, and this batch's loss is NaN/inf
            continue
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            for r in before_step:
                r.before_step(model, optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            for r in before_step:
                r.before_step(model, optimizer)
            optimizer.step()
        scheduler.step()
        state.step += 1
        n = y.shape[0]
        loss_sum += loss.detach().float() * n
        correct += (out.detach().argmax(1) == y).sum()
        seen += n
        progress(n)
        if after_step is not None:
            after_step(i + 1, lambda: snapshot(i + 1))
    if seen == 0:  # every batch has at least one image (num_batches), so all were skipped
        raise TrainingError(f"every batch of epoch {epoch + 1} had a non-finite loss and was skipped "
                            f"(train.on_nonfinite: skip); lower optim.lr or check the data and model")
    loss_v, correct_v, seen = distributed.sum_over_ranks(loss_sum, correct, seen)  # the one sync of the epoch
    guard.check(state.step)
    if not math.isfinite(loss_v):
        raise TrainingError(guard.message(state.step, None, loss_v))
    row = {"train_loss": loss_v / seen, "train_acc": correct_v / seen}
    if on_nonfinite == "skip":
        row["nonfinite_skipped"] = guard.skipped
    return row


class NonFiniteGuard:
    """Watches the loss for NaN/inf. On the CPU it checks every step (free: no device to wait
    for) and stops at the exact step. On CUDA, reading the loss each step would stall the GPU,
    so in ``stop`` mode the first bad step is recorded on the device and read at the next
    checkpoint or epoch end (the weights of that epoch are not saved; the last good checkpoint
    stays). ``skip`` must decide before the optimizer step, so it reads the loss every step on
    CUDA too: that host sync is the price of skipping."""

    def __init__(self, rt: Runtime, mode: str, epoch: int, optimizer):
        self.rt, self.mode, self.epoch, self.optimizer = rt, mode, epoch, optimizer
        self.skipped = 0
        self.sync_each_step = rt.device.type != "cuda" or mode == "skip"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=rt.device)  # CUDA stop mode

    def ok(self, loss: torch.Tensor, step: int, batch: int) -> bool:
        """False: skip this batch. Raises in stop mode when the loss is not finite."""
        if not self.sync_each_step:
            bad = ~torch.isfinite(loss.detach())
            self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, step),
                                         self.first_bad)
            return True
        value = float(loss.detach())
        if math.isfinite(value):
            return True
        if self.mode == "skip":
            self.skipped += 1
            return False
        raise TrainingError(self.message(step, batch, value))

    def check(self, step: int) -> None:
        """Raise if the device recorded a non-finite loss (CUDA stop mode; one sync)."""
        if not self.sync_each_step:
            first = int(self.first_bad)
            if first >= 0:
                raise TrainingError(self.message(first, None, float("nan")))

    def message(self, step: int, batch: Optional[int], value: float) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        where = f"epoch {self.epoch + 1}, step {step}" + (f" (batch {batch} of the epoch)" if batch else "")
        if step <= 1:
            cause = ("at the very first step, so the model or loss produces it on fresh weights "
                     "(a custom component, or data normalization with std 0)")
        else:
            cause = f"the learning rate ({lr:.3g}) is probably too high"
            if self.rt.precision == "fp16":
                cause += ", or fp16 overflowed (use train.precision: bf16)"
        return (f"non-finite training loss ({value}) at {where}: {cause}. Stopped; last.pt keeps the last "
                f"good checkpoint. Lower optim.lr, add warmup or gradient clipping, or set "
                f"train.on_nonfinite: skip to skip such batches")


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageSet, *, rt: Runtime, loss_fn: nn.Module, num_classes: int,
             batch_size: int) -> dict[str, Any]:
    """Loss, accuracy and the confusion matrix (rows: true class) on a labelled split."""
    model.eval()
    data = distributed.eval_shard(model, data)  # DDP: this rank's part
    loss_sum = torch.zeros((), device=rt.device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=rt.device)
    for x, y in eval_batches(data, batch_size, rt.device):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            out = model(x)
            loss = loss_fn(out, y)
        loss_sum += loss.float() * y.shape[0]
        confusion += torch.bincount(y * num_classes + out.argmax(1), minlength=num_classes ** 2)
    distributed.all_reduce_(loss_sum, confusion)
    cm = confusion.view(num_classes, num_classes).cpu()
    n = int(cm.sum())
    return {"loss": float(loss_sum) / max(n, 1), "acc": float(cm.diag().sum()) / max(n, 1), "confusion": cm}


# --------------------------------------------------------------------------- run folder
def new_run_dir(out: str | Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3``... if taken: never overwrite a run."""
    from clfkit.names import check_name; check_name(name, "run name")  # never outside out/
    out = Path(out)
    for i in range(1, 10000):
        path = out / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            from clfkit.io import WriteError

            raise WriteError(f"cannot create run folder {path}: {e.strerror or e}") from None
    raise TrainingError(f"too many runs named {name} under {out}")


class Reporter:
    """A rich progress bar on a terminal; one plain line per epoch otherwise."""

    def __init__(self, total_epochs: int, quiet: bool = False):
        self.total = total_epochs
        self.quiet = quiet
        self.live = sys.stdout.isatty() and not quiet
        self._progress = None

    def start_epoch(self, epoch: int, n_images: int) -> Callable[[int], None]:
        if not self.live:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self._progress is None:
            self._progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                      MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            self._progress.start()
        self._task = self._progress.add_task("train", total=n_images, epoch=f"{epoch + 1}/{self.total}")
        return lambda n: self._progress.advance(self._task, n)

    def end_epoch(self, row: dict) -> None:
        if self._progress is not None:
            self._progress.remove_task(self._task)
        if self.quiet:
            return
        line = (f"epoch {row['epoch']:>3}/{self.total}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}")
        if "val_acc" in row:
            line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        line += f"  lr {row['lr']:.3g}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
        self.print(line)

    def print(self, text: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# --------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def train(recipe: Recipe, out: str | Path = "runs", *, quiet: bool = False,
          run_dir: str | Path | None = None, resume: Optional[Resumed] = None,
          trackers: tuple[Any, ...] = ()) -> RunResult:
    """Train ``recipe``; write everything into a new run folder under ``out``. ``resume``
    (from clfkit.resume.load_resume_state) continues the run in ``run_dir`` from its last.pt.
    The run folder is locked (clfkit.locks) from its creation to the end of the run.
    ``trackers``: extra per-epoch observers besides the recipe's train.track (clfkit.tracking)."""
    with contextlib.ExitStack() as lock:
        return _train(recipe, out, quiet=quiet, run_dir=run_dir, resume=resume, lock=lock, trackers=trackers)


def _train(recipe: Recipe, out: str | Path, *, quiet: bool, run_dir: str | Path | None,
           resume: Optional[Resumed], lock: contextlib.ExitStack, trackers: tuple[Any, ...] = ()) -> RunResult:
    t_start = time.perf_counter()
    require_trackers(recipe.train.track)  # a missing tracker package fails before the run folder exists
    rt = resolve_runtime(recipe)
    world = distributed.setup(rt)  # under torchrun: join the group, pin this rank's GPU
    # this rank's part of last.pt (a mid-epoch one resumes only with the world size that saved it)
    resume_rng, resume_at = resume.for_rank(world.rank, world.size) if resume is not None else (None, None)
    tc = recipe.train
    if world.active and tc.on_nonfinite == "skip":
        # a rank skipping its step alone would desynchronize DDP's gradient all-reduce
        raise TrainingError("train.on_nonfinite: skip is not supported with several processes "
                            "(torchrun); use the default `stop`, or train in one process")
    seed_everything(recipe.seed, tc.deterministic)
    report = Reporter(tc.epochs, quiet or not distributed.is_main())

    # ---- data (read before the run folder exists: a data error leaves nothing behind)
    t0 = time.perf_counter()
    with distributed.main_first():  # rank 0 fills the data cache, the others read it
        splits: Splits = build_data(recipe)
    data_seconds = time.perf_counter() - t0
    if resume is not None:  # the labels are class indices: other classes would silently mislabel
        _check_same_data(resume, splits)
    mean, std = normalization(recipe, splits.train)
    num_classes = splits.num_classes

    # only rank 0 writes the run folder; other DDP ranks get a private temp folder
    run = distributed.private_run_dir() or (Path(run_dir) if run_dir else new_run_dir(out, recipe.name))
    run.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():  # first, before anything in the folder is touched
        lock.enter_context(run_lock(run, "resume" if resume is not None else "train into"))
    if resume is not None and distributed.is_main():
        remove_stale_temps(run)  # half-written files of the crash being resumed from
    if resume is None:
        write_text(run / "recipe.yaml", f"# resolved by clfkit {__version__}\n" + recipe.to_yaml())
    if splits.skipped:
        write_text(run / "skipped.txt", "".join(f"{p}\t{why}\n" for p, why in splits.skipped))
    report.print(f"run {run}  device {rt.device} ({rt.precision})  data: {_describe(splits, data_seconds)}")

    # ---- model and optimization
    model = build_model(recipe, num_classes, splits.in_chans, splits.image_size, mean, std)
    regularizers = build_regularizers(recipe)
    for r in regularizers:
        if hasattr(r, "on_model"):
            model = r.on_model(model) or model
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    loss_fn = build_loss(recipe, num_classes).to(rt.device)
    optimizer = build_optimizer(recipe, model, regularizers)
    aug_names: dict[str, list[str]] = {}
    per_image, batched_aug = build_augmentations(recipe, aug_names)
    n_train = len(splits.train)
    steps_per_epoch = num_batches(n_train, tc.batch_size, tc.drop_last)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, build_schedule(recipe, steps_per_epoch))
    scaler = torch.amp.GradScaler("cuda") if rt.precision == "fp16" else None
    train_model = distributed.wrap(model)  # DDP when launched by torchrun
    train_model = torch.compile(train_model) if tc.compile else train_model
    workers = recipe.data.workers if recipe.data.workers is not None else min(8, os.cpu_count() or 1)

    # In-memory data goes to the GPU once (val too: it is evaluated every epoch); per-image CPU
    # augmentation keeps it on the host.
    train_set, val_set = splits.train, splits.val if splits.val is not None and len(splits.val) else None
    if rt.device.type == "cuda" and not per_image:
        train_set = ImageSet(train_set.images.to(rt.device), train_set.labels.to(rt.device))
        if val_set is not None:
            val_set = ImageSet(val_set.images.to(rt.device), val_set.labels.to(rt.device))
    report.print(_data_path(aug_names, rt, workers))
    eval_bs = tc.eval_batch_size or tc.batch_size * 2
    ckpt_base = {"recipe": recipe.to_dict(), "class_names": splits.class_names,
                 "input": {"image_size": list(splits.image_size), "channels": splits.in_chans,
                           "mean": mean, "std": std, "resize": recipe.data.resize}}
    if resume is None:
        _save_parity_samples(run, splits)

    # ---- epochs
    best = {"val_acc": -1.0, "epoch": 0}
    history: list[dict] = []
    state = StepState()
    train_seconds = 0.0
    ema = WeightEMA(model, tc.ema) if tc.ema else None  # clfkit.ema: val, best.pt and test use it
    stopper = EarlyStopper(tc.early_stopping, bool(splits.val)) if tc.early_stopping else None
    # Objects with state_dict()/load_state_dict() that last.pt must carry (EMA, early
    # stopping, ...): add them here under a stable key and resume restores them.
    resumable = {k: v for k, v in {"ema": ema, "early_stopping": stopper}.items() if v is not None}
    eval_model = ema.module if ema is not None else model
    start_epoch = 0
    if resume is not None:
        restore(resume, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, extra=resumable)
        best, history, state.step = dict(resume.state["best"]), list(resume.history), int(resume.state["step"])
        start_epoch = resume.epoch
        # drop a metrics line written after last.pt (a crash between the two writes)
        write_text(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        if resume_at is None:
            set_rng_state(resume_rng)
        report.print(f"resuming {run} at epoch {start_epoch + 1}" + (
            f", batch {resume_at.batch + 1}" if resume_at else "") + f" (step {state.step})")

    def save_last(epochs_done: int, in_epoch: Optional[EpochProgress], row: Optional[dict] = None) -> None:
        save_checkpoint(run / "last.pt", {
            **ckpt_base, "model": model.state_dict(), "metrics": row,
            **training_state(epoch=epochs_done, step=state.step, progress=in_epoch, optimizer=optimizer,
                             scheduler=scheduler, scaler=scaler, best=best, history=history, extra=resumable)})

    def stop_message(where: str) -> str:
        if not distributed.is_main():  # its last.pt is a private copy; rank 0's message says what to do
            return f"rank {world.rank}: {stop.name}: stopped with the other ranks {where}, step {state.step}"
        return (f"{stop.name} received: stopped {where}, step {state.step}; saved {run / 'last.pt'}.\n"
                f"Resume with: {distributed.launch_command(f'train --resume {run}')}")

    # torch.compile compiles on the first step: time that step and report it (summary
    # compile_seconds); epoch 1's seconds and images_per_s still include it
    compile_clock: dict[str, Optional[float]] = {"t0": None, "seconds": None}

    def after_step(batch: int, snapshot: Callable[[], EpochProgress]) -> None:
        if compile_clock["t0"] is not None and compile_clock["seconds"] is None:
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            compile_clock["seconds"] = round(time.perf_counter() - compile_clock["t0"], 2)
            report.print(f"torch.compile: first step took {compile_clock['seconds']:.1f}s (compilation included)")
        if ema is not None:
            ema.update(state.step)
        # one process: the signal flag, every step; DDP: all ranks agree every few steps
        stopping = distributed.stop_agreed(stop, state.step)
        # the last batch of an epoch is followed by the epoch-end checkpoint anyway
        due = tc.checkpoint_every_steps is not None and state.step % tc.checkpoint_every_steps == 0
        if not (due or stopping) or batch >= steps_per_epoch:
            return
        in_epoch = snapshot()
        in_epoch.lr = epoch_lr
        save_last(epoch, in_epoch)
        if stopping:
            raise Interrupted(stop_message(f"in epoch {epoch + 1} after batch {batch}/{steps_per_epoch}"),
                              stop.signum)

    run_trackers = open_trackers(recipe.train.track, run, recipe.to_dict(), start_epoch, trackers,
                                 main=distributed.is_main())  # clfkit.tracking
    lock.callback(run_trackers.close)  # closed with the run, after finish() logged the summary
    with catch_stop_signals() as stop, contextlib.closing(report), \
            contextlib.closing(MetricsLog(run, start_epoch, run_trackers)) as metrics_log:
        for epoch in range(start_epoch, tc.epochs):
            t0 = time.perf_counter()
            progress = report.start_epoch(epoch, n_train)
            epoch_lr = optimizer.param_groups[0]["lr"]
            if resume_at is not None and resume_at.lr is not None:
                epoch_lr = resume_at.lr  # the row reports the LR the epoch started with
            row: dict[str, Any] = {"epoch": epoch + 1}
            if tc.compile and compile_clock["t0"] is None:
                compile_clock["t0"] = time.perf_counter()
            row.update(train_one_epoch(
                train_model, train_set, rt=rt, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, regularizers=regularizers, batched_aug=batched_aug, num_classes=num_classes,
                batch_size=tc.batch_size, seed=recipe.seed, epoch=epoch, drop_last=tc.drop_last,
                per_image=per_image, workers=workers, state=state, progress=progress,
                on_nonfinite=tc.on_nonfinite, resume_at=resume_at, after_step=after_step))
            resume_at = None
            t_train = time.perf_counter() - t0
            train_seconds += t_train
            if val_set is not None:
                ev = evaluate(eval_model, val_set, rt=rt, loss_fn=loss_fn, num_classes=num_classes,
                              batch_size=eval_bs)
                row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            row.update(lr=epoch_lr, seconds=round(time.perf_counter() - t0, 3),
                       images_per_s=round(n_train / max(t_train, 1e-9), 1), step=state.step)
            history.append(row)
            append_line(run / "metrics.jsonl", json.dumps(row))
            metrics_log.write(row)
            report.end_epoch(row)
            if replaces_best(row, best.get("row")):  # clfkit.runs: best val acc, or the last epoch
                best = {"val_acc": row.get("val_acc"), "epoch": epoch + 1, "row": row}
                save_checkpoint(run / "best.pt", {**ckpt_base, "model": eval_model.state_dict(),
                                                  "epoch": epoch + 1, "metrics": row})
            early_stop = stopper is not None and stopper.update(row)
            save_last(epoch + 1, None, row)
            if distributed.stop_agreed(stop):  # every epoch end, on every rank
                raise Interrupted(stop_message(f"at the end of epoch {epoch + 1}"), stop.signum)
            if early_stop:
                report.print(stopper.describe())
                break

    # ---- test with the best checkpoint
    summary: dict[str, Any] = {
        "name": recipe.name, "run_dir": str(run), "epochs": tc.epochs, "best_epoch": best["epoch"],
        "best_val_acc": best["row"].get("val_acc"), "selected_on": selected_on(best["row"]),
        "train_acc_at_best": best["row"]["train_acc"], "params": n_params,
        "device": str(rt.device) + (f" ({torch.cuda.get_device_name(rt.device)})" if rt.device.type == "cuda" else ""),
        "precision": rt.precision, "num_classes": num_classes, "class_names": splits.class_names,
        "train_images": n_train, "val_images": len(splits.val) if splits.val else 0,
        "test_acc": None, "test_loss": None, "skipped_files": len(splits.skipped),
        "data_seconds": round(data_seconds, 2), "train_seconds": round(train_seconds, 2),
        "compile_seconds": compile_clock["seconds"],
        "normalize": {"mean": mean, "std": std},  # as used (computed from train when `auto`)
        "clfkit_version": __version__, "epochs_run": len(history), "ema": ema is not None,
        "stopped_early_at": stopper.stopped_epoch if stopper and stopper.stopped_epoch else None,
    }
    # a resumed DDP rank's private folder lacks the best.pt of epochs before the resume: every
    # rank reads rank 0's (written before the last checkpoint's gather, which they all passed)
    best_pt = (resume.run_dir if resume is not None else run) / "best.pt"
    summary.update(_evaluate_best(best_pt, model, splits, val_set, rt=rt, loss_fn=loss_fn, batch_size=eval_bs))
    if summary.get("eval_split") and distributed.is_main():  # model holds best.pt: its surest errors
        write_mistakes(run, model, splits.test if summary["eval_split"] == "test" else val_set,
                       summary["eval_split"], rt, splits.class_names, eval_bs)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(run / "summary.json", summary)
    write_run_reports(run)  # curves.png, per_class.csv, confusion.png (clfkit.evaluate)
    write_run_report(run)  # report.html (clfkit.report_html)
    run_trackers.finish(run, summary)  # MLflow: the summary and the report files
    if summary["best_val_acc"] is not None:
        msg = f"done in {summary['wall_seconds']:.0f}s: best val acc {summary['best_val_acc']:.4f} (epoch {best['epoch']})"
    else:  # never call train accuracy "val"
        msg = (f"done in {summary['wall_seconds']:.0f}s: no val split, so best.pt is the last epoch ({best['epoch']}, "
               f"train acc {summary['train_acc_at_best']:.4f})")
    if summary["test_acc"] is not None:
        msg += f", test acc {summary['test_acc']:.4f}"
    report.print(msg + f"  -> {run}")
    return RunResult(run, summary)


def _data_path(names: dict[str, list[str]], rt: Runtime, workers: int) -> str:
    """Which input path the run takes, for the log: a transform without a batched version
    sends every batch through CPU loader workers, and users should see that."""
    per_image, batched = names.get("per_image", []), names.get("batched", [])
    where = "host memory" if per_image or rt.device.type == "cpu" else f"{rt.device.type} memory"
    line = f"data path: uint8 tensors in {where}"
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


def _check_same_data(resume: Resumed, splits: Splits) -> None:
    """A resumed run must see the classes and input shape its last.pt was trained on."""
    from clfkit.resume import ResumeError

    last = resume.run_dir / "last.pt"
    change = describe_class_change(resume.state["class_names"], splits.class_names)
    if change:
        raise ResumeError(f"cannot resume {resume.run_dir}: {change}. Restore the class folders as they were, "
                          f"or train a new run on the new classes; nothing was changed in the run folder")
    spec = resume.state["input"]
    now = {"channels": splits.in_chans, "image_size": list(splits.image_size)}
    was = {"channels": spec["channels"], "image_size": list(spec["image_size"])}
    if now != was:
        raise ResumeError(f"cannot resume {resume.run_dir}: {last} was trained on {was}, but the data now "
                          f"gives {now}; train a new run instead")


def _evaluate_best(best_pt: Path, model: nn.Module, splits: Splits, val_set: Optional[ImageSet], *,
                   rt: Runtime, loss_fn: nn.Module, batch_size: int) -> dict[str, Any]:
    """Load best.pt into ``model`` and evaluate it on the labelled test split (the val split
    when there is none). Returns the summary's eval_split, per_class and confusion, plus
    test_acc, test_loss and test_images when it was the test split; nothing without either.
    ``val_set``: the val split as training evaluated it (on the GPU when it lives there)."""
    if splits.test is not None and splits.test.labelled:
        split, data = "test", splits.test
    elif val_set is not None:
        split, data = "val", val_set
    else:
        return {}
    load_weights(model, load_checkpoint(best_pt, map_location=rt.device)["model"], str(best_pt))
    ev = evaluate(model, data, rt=rt, loss_fn=loss_fn, num_classes=splits.num_classes, batch_size=batch_size)
    out = {"eval_split": split, "per_class": per_class(ev["confusion"], splits.class_names),
           "confusion": ev["confusion"].tolist()}
    if split == "test":
        out.update(test_acc=ev["acc"], test_loss=ev["loss"], test_images=len(splits.test))
    return out


def _save_parity_samples(run: Path, splits: Splits, n: int = 64) -> None:
    """A few real validation images for the exporter's parity check (uint8, .npy: no pickle)."""
    src = splits.val if splits.val is not None and len(splits.val) else splits.train
    with atomic_open(run / "samples.npy", "wb") as f:
        np.save(f, src.images[:n].numpy(), allow_pickle=False)
