"""DDP: the epoch order is split over ranks batch by batch; two CPU processes with gloo both
train, see the same reduced metrics, end with the same weights, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from clfkit import distributed
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
        got = torch.cat([parts[0][i * 16:(i + 1) * 16], parts[1][i * 16:(i + 1) * 16]])
        assert torch.equal(got, order[i * 32:(i + 1) * 32])
    covered = set(torch.cat(parts).tolist())
    assert covered == set(order[:full * 32].tolist()) if drop_last and full else covered == set(order.tolist())


def test_batch_size_must_divide(monkeypatch):
    monkeypatch.setattr(distributed, "WORLD", distributed.World(rank=0, size=3))
    with pytest.raises(TrainingError, match="multiple of 3"):
        distributed.shard_order(torch.arange(10), 32, True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, out: str, results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CLFKIT_CACHE="0")
    torch.set_num_threads(1)
    from clfkit.train import train

    res = train(tiny_recipe(train__epochs=2, train__batch_size=32, train__device="cpu"), out, quiet=True)
    weights = sum(float(v.double().sum()) for v in _weights(res.run_dir).values())
    with open(os.path.join(results, f"rank{rank}.json"), "w") as f:
        json.dump({"run_dir": str(res.run_dir), "test_acc": res.summary["test_acc"],
                   "metrics": (res.run_dir / "metrics.jsonl").read_text(), "weights": weights}, f)


def _weights(run_dir):
    from clfkit.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / "last.pt")["model"]


def test_two_gloo_processes_train_and_only_rank0_writes(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    mp.start_processes(_rank_main, args=(_free_port(), str(out), str(results)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (json.loads((results / f"rank{r}.json").read_text()) for r in range(2))
    assert [p.name for p in out.iterdir()] == ["tiny"], "one run folder, written by rank 0"
    assert r0["run_dir"] == str(out / "tiny") and not r1["run_dir"].startswith(str(out))
    assert not os.path.exists(r1["run_dir"]), "rank 1's private folder is removed at exit"
    m0 = [json.loads(line) for line in r0["metrics"].splitlines()]
    m1 = [json.loads(line) for line in r1["metrics"].splitlines()]
    assert len(m0) == 2 and [r["step"] for r in m0] == [15, 30]  # the single-process step count
    for a, b in zip(m0, m1):  # metrics summed over ranks: both ranks report the same figures
        assert a["train_loss"] == pytest.approx(b["train_loss"]) and a["val_acc"] == pytest.approx(b["val_acc"])
    assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-6), "DDP keeps the ranks' weights equal"
    assert r0["test_acc"] == r1["test_acc"] and r0["test_acc"] > 0.3
