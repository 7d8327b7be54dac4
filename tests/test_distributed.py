"""DDP: the epoch order is split over ranks batch by batch; two CPU processes with gloo both
train, see the same reduced metrics, end with the same weights, and only rank 0 writes; a
2-rank run stopped mid-epoch and resumed with 2 ranks ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from clfkit.train.engine import distributed
from clfkit.errors import TrainingError

from conftest import tiny_recipe


@pytest.mark.parametrize("n,drop_last", [(100, True), (100, False), (96, True), (20, False), (20, True)])
def test_shard_order_splits_each_global_batch(monkeypatch, n, drop_last):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    parts = []
    for r in range(2):
        monkeypatch.setattr(distributed, "WORLD", distributed.World(rank=r, size=2))
        mine, b = distributed.shard_order(order, 32, drop_last)
        assert b == 16
        parts.append(mine)
    assert len(parts[0]) == len(parts[1]), "every rank takes the same number of steps"
    full = n // 32
    for i in range(full):  # global batch i is the single-process batch i
        got = torch.cat([parts[0][i * 16 : (i + 1) * 16], parts[1][i * 16 : (i + 1) * 16]])
        assert torch.equal(got, order[i * 32 : (i + 1) * 32])
    covered = set(torch.cat(parts).tolist())
    assert (
        covered == set(order[: full * 32].tolist()) if drop_last and full else covered == set(order.tolist())
    )


def test_batch_size_must_divide(monkeypatch):
    monkeypatch.setattr(distributed, "WORLD", distributed.World(rank=0, size=3))
    with pytest.raises(TrainingError, match="multiple of 3"):
        distributed.shard_order(torch.arange(10), 32, True)


def test_nonfinite_skip_refused_under_ddp(monkeypatch, tmp_path):
    """A rank skipping a step alone would desynchronize the gradient all-reduce."""
    from clfkit.train.trainer import train

    from conftest import tiny_recipe

    monkeypatch.setattr(distributed, "setup", lambda rt: distributed.World(rank=0, size=2))
    with pytest.raises(TrainingError, match="on_nonfinite: skip is not supported with several processes"):
        train(tiny_recipe(train__on_nonfinite="skip"), tmp_path, quiet=True)
    assert not list(tmp_path.iterdir())


def test_batch_size_not_dividing_is_refused_before_the_run_folder(monkeypatch, tmp_path):
    """Red team 19: torchrun with 2 ranks and train.batch_size 7 read the data and made the run
    folder (recipe.yaml, samples.npy) before the first epoch refused the batch size; the
    leftover folder pushed the next run to NAME-2."""
    from clfkit.train.trainer import train

    monkeypatch.setattr(distributed, "setup", lambda rt: distributed.World(rank=0, size=2))
    monkeypatch.setattr("clfkit.train.prepare.build_data", lambda recipe: pytest.fail("the data was read"))
    with pytest.raises(
        TrainingError,
        match="train.batch_size 7 is the global batch and must divide by the 2 "
        "processes; use a multiple of 2",
    ):
        train(tiny_recipe(train__batch_size=7), tmp_path, quiet=True)
    assert not list(tmp_path.iterdir())
    with pytest.raises(
        TrainingError,
        match="must divide by the 3 processes; resume it with a number of processes "
        r"that divides 8 \(--nproc_per_node\)",
    ):
        distributed.check_batch_size(8, 3, resuming=True)  # --resume cannot change the batch size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    """What torchrun would set for rank ``rank`` of 2."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CLFKIT_CACHE="0",
    )
    torch.set_num_threads(1)


def _spawn(fn, *args, timeout: float = 120) -> None:
    """Run ``fn(rank, port, *args)`` in 2 processes; ranks stuck in a collective fail the test
    instead of hanging it."""
    ctx = mp.start_processes(fn, args=(_free_port(), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish in {timeout:.0f}s (blocked in a collective?)")


def _rank_main(rank: int, port: int, out: str, results: str) -> None:
    _join(rank, port)
    from clfkit.train.trainer import train

    res = train(tiny_recipe(train__epochs=2, train__batch_size=32, train__device="cpu"), out, quiet=True)
    weights = sum(float(v.double().sum()) for v in _weights(res.run_dir).values())
    with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "run_dir": str(res.run_dir),
                "test_acc": res.summary["test_acc"],
                "metrics": (res.run_dir / "metrics.jsonl").read_text(),
                "weights": weights,
            },
            f,
        )


def _weights(run_dir):
    from clfkit.run.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "last.pt")["model"]


def test_two_gloo_processes_train_and_only_rank0_writes(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    _spawn(_rank_main, str(out), str(results))
    r0, r1 = (json.loads((results / f"rank{r}.json").read_text()) for r in range(2))
    assert [p.name for p in out.iterdir()] == ["tiny"], "one run folder, written by rank 0"
    assert r0["run_dir"] == str(out / "tiny") and not r1["run_dir"].startswith(str(out))
    assert not os.path.exists(r1["run_dir"]), "rank 1's private folder is removed at exit"
    m0 = [json.loads(line) for line in r0["metrics"].splitlines()]
    m1 = [json.loads(line) for line in r1["metrics"].splitlines()]
    assert len(m0) == 2 and [r["step"] for r in m0] == [15, 30]  # the single-process step count
    for a, b in zip(m0, m1):  # metrics summed over ranks: both ranks report the same figures
        assert a["train_loss"] == pytest.approx(b["train_loss"]) and a["val_acc"] == pytest.approx(
            b["val_acc"]
        )
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-6), "DDP keeps the ranks' weights equal"
    assert r0["test_acc"] == r1["test_acc"] and r0["test_acc"] > 0.3


STOP_AT = 20  # rank 1 alone is signalled after this step; the ranks agree at the next check


def _stop_resume_main(rank: int, port: int, out: str, results: str) -> None:
    """Per rank: a reference run, the same run with SIGTERM to rank 1 only mid-epoch, then its
    resume with 2 ranks. One process group for all three (one spawn: the test stays short)."""
    _join(rank, port)
    import clfkit.train.trainer as T
    from clfkit.train.engine.guard import NonFiniteGuard
    from clfkit.train.trainer import resume_run
    from clfkit.util.signals import Interrupted

    # lr 0.1: epoch 2 validates worse than epoch 1, so the resumed part never writes best.pt and
    # the final test evaluation reads the one written before the stop
    recipe = tiny_recipe(
        train__epochs=2,
        train__device="cpu",
        train__deterministic=True,
        train__checkpoint_every_steps=5,
        optim__lr=0.1,
    )
    T.train(recipe, os.path.join(out, "ref"), quiet=True)
    real_ok = NonFiniteGuard.ok

    def ok(self, loss, step, batch):  # called once per step, before the optimizer step
        if rank == 1 and step == STOP_AT + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_ok(self, loss, step, batch)

    NonFiniteGuard.ok = ok
    try:
        T.train(recipe, os.path.join(out, "cut"), quiet=True)
        raise AssertionError("the signalled run did not stop")
    except Interrupted as e:
        stopped = {"exit_code": e.exit_code, "message": str(e)}
    finally:
        NonFiniteGuard.ok = real_ok
    # a real resume is a new launch; these processes go on, so rank 1 must not read last.pt (or
    # clear its temp file) while rank 0 is still writing it
    torch.distributed.barrier()
    run = os.path.join(out, "cut", "tiny")
    if rank == 0:
        shutil.copy(os.path.join(run, "last.pt"), os.path.join(results, "interrupted.pt"))
    resume_run(run, quiet=True)
    with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
        json.dump(stopped, f)


def test_two_ranks_stopped_mid_epoch_resume_bit_identical(tmp_path):
    from test_resume import _assert_same_run

    from clfkit.train.trainer import resume_run

    out, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    _spawn(_stop_resume_main, str(out), str(results))
    stops = [json.loads((results / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["exit_code"] for s in stops] == [143, 143], "both ranks stop, on rank 1's SIGTERM"
    assert "torchrun --nproc_per_node=2 -m clfkit train --resume" in stops[0]["message"]

    # the ranks agreed at the first check after step 20: step 24, batch 9 of epoch 2
    last = torch.load(results / "interrupted.pt", weights_only=True)
    assert (last["epoch"], last["step"], last["in_epoch"]["batch"]) == (1, 24, 9)
    assert len(last["ranks"]) == 2 and [r["seen"] for r in last["ranks"]] == [144, 144]
    assert not torch.equal(last["ranks"][0]["aug_rng"], last["ranks"][1]["aug_rng"]), "own streams"

    _assert_same_run(out / "ref" / "tiny", out / "cut" / "tiny")

    # one process cannot continue a 2-process mid-epoch checkpoint
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(results / "interrupted.pt", one / "last.pt")
    with pytest.raises(TrainingError, match=r"by 2 process\(es\).*torchrun --nproc_per_node=2"):
        resume_run(one, quiet=True)
