"""Data-parallel training over several processes (DDP), launched by torchrun::

    torchrun --nproc_per_node=8 -m clfkit train RECIPE                     # one machine, 8 GPUs
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29400 --rdzv-id=JOB -m clfkit train RECIPE    # two machines

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them (a plain ``clfkit train``) every
function here is a no-op and training is single-process. NCCL on GPUs (rank r uses
``cuda:LOCAL_RANK``), gloo on the CPU.

What a recipe means does not change with the number of processes: ``train.batch_size`` is the
global batch, split evenly over ranks (it must divide by the world size), so steps per epoch,
the schedule and the learning rate are those of a single-process run. Each global batch is the
same slice of the epoch's shuffled order as in one process; rank r takes its r-th part.
Metrics are summed over ranks before they are read; evaluation is sharded and its confusion
matrix summed. Only rank 0 writes into the run folder and prints; the other ranks write their
(identical) checkpoints into a private temp folder that is removed at exit.

Checkpoints and stops: ``last.pt`` holds every rank's RNG states and, mid-epoch, every rank's
augmentation generator and partial metric sums (:func:`gather`), so each rank resumes from its
own (see clfkit.run.resume). A SIGINT/SIGTERM may reach the ranks at different steps, or only some
of them; a rank that stopped alone would leave the others waiting in the gradient all-reduce, so
the ranks agree on stopping (:func:`stop_agreed`) every ``STOP_CHECK_EVERY`` steps and at
every epoch end, and all stop at the same step.

The trainer calls these functions; DDP itself lives only here.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from clfkit.errors import TrainingError
from clfkit.util.signals import StopFlag


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where this rank's collectives run (NCCL: its GPU)

    @property
    def active(self) -> bool:
        return self.size > 1


WORLD = World()


def setup(rt) -> World:
    """Join the process group torchrun describes (if any) and pin this rank's device on
    ``rt`` (a clfkit.train.engine.runtime.Runtime). Called once at the start of ``train``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return WORLD
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if rt.device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TrainingError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                f"use --nproc_per_node <= {torch.cuda.device_count()}"
            )
        rt.device = torch.device("cuda", local_rank)
        torch.cuda.set_device(rt.device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if rt.device.type == "cuda" else "gloo")
        atexit.register(_teardown)
    WORLD.rank, WORLD.size, WORLD.local_rank = dist.get_rank(), dist.get_world_size(), local_rank
    WORLD.device = rt.device
    return WORLD


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return WORLD.rank == 0


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (it decodes the data and fills the cache), the others after
    it, reading the cache instead of decoding the same files at once."""
    if WORLD.active and not is_main():
        dist.barrier()
    yield
    if WORLD.active and is_main():
        dist.barrier()


def private_run_dir() -> Optional[Path]:
    """None on rank 0 (it writes the real run folder); a temp folder, removed at exit, on others."""
    if not WORLD.active or is_main():
        return None
    path = Path(tempfile.mkdtemp(prefix=f"clfkit-rank{WORLD.rank}-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def wrap(model: torch.nn.Module, sync_bn: bool = False) -> torch.nn.Module:
    """The model in DistributedDataParallel when there is more than one rank. ``sync_bn``
    (train.sync_bn): its BatchNorm layers become SyncBatchNorm first, in place inside ``model``
    (same state_dict keys, so checkpoints and export are unchanged); in one process there is
    nothing to synchronize and the model stays as it is."""
    if not WORLD.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    p = next(model.parameters())
    if sync_bn:
        to_sync_bn(model, p.device)
    return DistributedDataParallel(model, device_ids=[p.device.index] if p.is_cuda else None)


def to_sync_bn(model: torch.nn.Module, device: torch.device) -> None:
    """``model``'s BatchNorm layers as SyncBatchNorm, replaced in place (train.sync_bn)."""
    if device.type != "cuda":  # DDP refuses SyncBatchNorm on CPU (gloo) processes
        raise TrainingError(
            "train.sync_bn needs CUDA GPUs (NCCL); this DDP run is on the CPU: set train.sync_bn=false"
        )
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:  # the model is one bare BatchNorm layer: no parent to replace it in
        raise TrainingError("train.sync_bn needs a model that contains its BatchNorm layers")


def check_batch_size(batch_size: int, w: int, resuming: bool = False) -> None:
    """The global train.batch_size splits evenly over the ``w`` ranks; checked when the run
    starts, before its data is read or its folder made, and again where the batches are cut.
    ``resuming``: the recipe is the run's own and cannot change; the number of processes can."""
    if w > 1 and batch_size % w:
        fix = (
            f"resume it with a number of processes that divides {batch_size} (--nproc_per_node)"
            if resuming
            else f"use a multiple of {w}"
        )
        raise TrainingError(
            f"train.batch_size {batch_size} is the global batch and must divide by the {w} processes; {fix}"
        )


def shard_order(order: torch.Tensor, batch_size: int, drop_last: bool) -> tuple[torch.Tensor, int]:
    """This rank's part of the epoch's order and its per-rank batch size. Global batch i is
    ``order[i*B:(i+1)*B]`` as in one process; rank r takes its r-th B/world slice. A last
    partial batch (kept when not drop_last) is padded from the start of the order so that
    every rank takes the same number of steps (DDP needs that)."""
    if not WORLD.active:
        return order, batch_size
    w, r = WORLD.size, WORLD.rank
    check_batch_size(batch_size, w)
    b, n = batch_size // w, len(order)
    full = n // batch_size
    mine = order[: full * batch_size].view(full, w, b)[:, r].reshape(-1)
    rest = order[full * batch_size :]
    if len(rest) and (not drop_last or full == 0):
        per = math.ceil(len(rest) / w)
        padded = torch.cat([rest, order[: per * w - len(rest)]])
        mine = torch.cat([mine, padded.view(w, per)[r]])
    return mine, b


def rank_seed(seed: int) -> int:
    """A per-rank seed for augmentation draws: ranks see different images and must not share
    their random flips and crops."""
    return seed + 1_000_003 * WORLD.rank


def sum_over_ranks(*values) -> list[float]:
    """Floats of ``values`` (tensors on the device or numbers), summed over ranks: one
    all-reduce and one host sync for all of them."""
    tensors = [
        v.detach().double().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64)
        for v in values
    ]
    device = next((v.device for v in values if torch.is_tensor(v)), torch.device("cpu"))
    stacked = torch.stack([t.to(device) for t in tensors])
    if WORLD.active:
        dist.all_reduce(stacked)
    return stacked.tolist()


def gather(obj):
    """Every rank's ``obj`` (small picklable values: RNG states, partial sums), as a list by rank;
    ``[obj]`` in one process. Called by all ranks at once (a checkpoint)."""
    if not WORLD.active:
        return [obj]
    out = [None] * WORLD.size
    dist.all_gather_object(out, obj)
    return out


# Under DDP the ranks agree on a stop every this many optimizer steps (and at each epoch end):
# one scalar all-reduce and host sync per STOP_CHECK_EVERY steps instead of one per step on the
# GPU path. A signal therefore takes effect up to this many steps late; torchrun gives its
# workers 30 s (--shutdown_timeout) after forwarding a SIGTERM before it kills them.
STOP_CHECK_EVERY = 8


_SIGNAL_BUFFERS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _signal_on_device(signum: int) -> torch.Tensor:
    """``signum`` as a one-element tensor on this rank's collective device. On CUDA through a
    pinned host buffer and a non-blocking copy: ``torch.tensor(..., device=cuda)`` would copy
    from pageable memory and block the host every check. The buffers are reused: the previous
    check's result was read on the host (a sync), so its copy has finished."""
    if WORLD.device.type != "cuda":
        return torch.tensor(signum, dtype=torch.int64, device=WORLD.device)
    if WORLD.device not in _SIGNAL_BUFFERS:
        _SIGNAL_BUFFERS[WORLD.device] = (
            torch.zeros((), dtype=torch.int64).pin_memory(),
            torch.zeros((), dtype=torch.int64, device=WORLD.device),
        )
    host, dev = _SIGNAL_BUFFERS[WORLD.device]
    host.fill_(signum)
    dev.copy_(host, non_blocking=True)
    return dev


def stop_agreed(flag: StopFlag, step: Optional[int] = None) -> bool:
    """Whether every rank stops now. One process: ``flag.pending``, read every step as before.
    Under DDP, at steps that are multiples of STOP_CHECK_EVERY and when ``step`` is None (epoch
    end; every rank must call it there too), the ranks all-reduce the largest signal number any
    of them received; all then agree, and ``flag`` takes that signal. Other steps: False."""
    if not WORLD.active:
        return flag.pending
    if step is not None and step % STOP_CHECK_EVERY:
        return False
    signum = _signal_on_device(flag.signum or 0)
    dist.all_reduce(signum, op=dist.ReduceOp.MAX)
    if int(signum):
        flag.signum = int(signum)
    return flag.pending


def launch_command(args: str) -> str:
    """How to run ``clfkit ARGS`` with this run's processes (what a resume message shows)."""
    if not WORLD.active:
        return f"clfkit {args}"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", WORLD.size))
    if per_node == WORLD.size:
        return f"torchrun --nproc_per_node={WORLD.size} -m clfkit {args}"
    return f"torchrun (as launched: {WORLD.size} processes, {per_node} per node) -m clfkit {args}"


def all_reduce_(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks in place (evaluation's loss sum and confusion matrix)."""
    if WORLD.active:
        for t in tensors:
            dist.all_reduce(t)


def eval_shard(model: torch.nn.Module, data):
    """This rank's contiguous part of an evaluation split. BatchNorm running statistics are
    taken from rank 0 first, so every rank evaluates the model rank 0 saves."""
    if not WORLD.active:
        return data
    for buf in model.buffers():
        dist.broadcast(buf, 0)
    per = math.ceil(len(data) / WORLD.size)
    lo, hi = min(WORLD.rank * per, len(data)), min((WORLD.rank + 1) * per, len(data))
    from clfkit.data import ImageSet, disk_storage as storage

    # a disk split (data.storage) stays on disk: its shard is a range of rows, read as evaluated
    images = data.images.select(np.arange(lo, hi)) if storage.is_disk(data.images) else data.images[lo:hi]
    return ImageSet(
        images,
        data.labels[lo:hi] if data.labels is not None else None,
        data.paths[lo:hi] if data.paths is not None else None,
    )
