"""Several machines, played on one: two torchrun "nodes" (--nnodes=2, c10d rendezvous on
127.0.0.1, each node its own CLFKIT_CACHE_DIR) train a folder recipe and a shard recipe, and
reach the metrics of one process within the tolerance docs/data-formats.md states: the folder
run trains the very same global batches (loss equal to 1e-3 relative), the shard run other
batches of the same data (accuracy within 0.1, both high)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_recipe, write_image_folder

pytest.importorskip("webdataset")

SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
from clfkit.recipe import validate_recipe
from clfkit.train.trainer import train
out = sys.argv[1]
for name, recipe in json.loads(open(sys.argv[2]).read()).items():
    res = train(validate_recipe(recipe), os.path.join(out, name), quiet=True)
    if os.environ["RANK"] == "0":
        json.dump(res.summary, open(os.path.join(out, name + ".json"), "w"))
"""


def _recipes(images: Path, shards: Path) -> dict:
    common = dict(
        data__image_size=12,
        data__workers=0,
        train__epochs=2,
        train__batch_size=8,
        train__device="cpu",
        train__deterministic=True,
        model__norm="none",
        model__blocks=[{"channels": 4, "pool": "max"}],
    )
    folder = tiny_recipe(data__source={"name": "folder", "root": str(images)}, **common)
    streamed = tiny_recipe(
        data__source={
            "name": "webdataset",
            "train": str(shards / "train-{000000..000005}.tar"),
            "test": str(shards / "test-000000.tar"),
        },
        **common,
    )
    return {"folder": folder.to_dict(), "shards": streamed.to_dict()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_match_one_process(tmp_path):
    from clfkit.data.pack import pack
    from clfkit.recipe import validate_recipe
    from clfkit.train.trainer import train

    images = write_image_folder(tmp_path / "imgs", per_class=24, size=12)
    pack(str(images), tmp_path / "shards", "8")
    recipes = tmp_path / "recipes.json"
    recipes.write_text(json.dumps(_recipes(images, tmp_path / "shards")))
    script = tmp_path / "both.py"
    script.write_text(SCRIPT)
    port, out = _free_port(), tmp_path / "two"
    procs = []
    for node in range(2):
        env = {
            **os.environ,
            "CLFKIT_CACHE": "1",
            "CLFKIT_CACHE_DIR": str(tmp_path / f"cache{node}"),
            "OMP_NUM_THREADS": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=clfkit-test",
            str(script),
            str(out),
            str(recipes),
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    deadline = time.monotonic() + 300
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the two nodes did not finish in 300 s")
    logs = [p.stdout.read() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    assert (tmp_path / "cache0").is_dir() and (tmp_path / "cache1").is_dir(), (
        "each node decoded into its own cache"
    )

    for name, recipe in json.loads(recipes.read_text()).items():
        two = json.loads((out / f"{name}.json").read_text())
        one = train(validate_recipe(recipe), tmp_path / "one" / name, quiet=True).summary
        assert two["train_images"] == one["train_images"] and two["val_images"] == one["val_images"]
        assert one["test_acc"] > 0.9 and two["test_acc"] > 0.9, (one["test_acc"], two["test_acc"])
        rows = [
            [json.loads(line) for line in (Path(s["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
            for s in (one, two)
        ]
        if name == "folder":  # the same global batches: the same numbers, to float summation order
            for a, b in zip(*rows):
                assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
                assert b["val_acc"] == pytest.approx(a["val_acc"], abs=1e-6)
        else:  # other batches of the same data (each rank its own range of the shards)
            assert abs(two["best_val_acc"] - one["best_val_acc"]) <= 0.1
            assert abs(two["test_acc"] - one["test_acc"]) <= 0.1
