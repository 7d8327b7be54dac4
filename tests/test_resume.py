"""Exact resume, interrupts and non-finite losses.

The resume tests run the trainer in subprocesses, as a user would: a run killed with SIGKILL
in the middle of an epoch and resumed must end bit-identical (weights and metrics) to one that
was never interrupted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY, sigint_at_step, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"seconds", "images_per_s"}  # wall-clock fields: the only ones allowed to differ


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _recipe_file(tmp_path: Path, **train) -> Path:
    data = json.loads(json.dumps(TINY))
    data["data"]["image_size"] = 8  # TINY's steps per epoch, a quarter of the pixels: resume is the test
    data["train"].update({"epochs": 3, "deterministic": True, **train})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# SIGKILL itself at the N-th optimizer step: a crash at a known point, mid-epoch.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    kill_at, calls = int(sys.argv[1]), [0]
    original = torch.optim.Adam.step
    def step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, *args, **kwargs)
    torch.optim.Adam.step = step
    from clfkit.cli import main
    sys.argv = ["clfkit"] + sys.argv[2:]
    main()
""")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    for ckpt in ("last.pt", "best.pt"):
        wa, wb = _load(a / ckpt)["model"], _load(b / ckpt)["model"]
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{ckpt}: {k} differs"
    oa, ob = _load(a / "last.pt")["optimizer"], _load(b / "last.pt")["optimizer"]
    for k, s in oa["state"].items():
        for name, t in s.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(ob["state"][k][name])), name
    assert _metrics(a) == _metrics(b)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for key in ("best_epoch", "best_val_acc", "test_acc", "test_loss", "per_class", "confusion"):
        assert sa[key] == sb[key], key


def _in_process(*args: str):
    """The CLI in this process (torch already imported; the same one thread as the subprocesses)."""
    from click.testing import CliRunner

    from clfkit.cli import cli

    assert torch.get_num_threads() == int(_env()["OMP_NUM_THREADS"])
    return CliRunner().invoke(cli, list(args))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    # 480 images / batch 32 = 15 steps per epoch; step checkpoints every 4 steps. Killed at
    # step 27 (epoch 2, batch 12): last.pt is the step-24 checkpoint, 9 batches into epoch 2.
    # Only the killed run needs a process of its own; the reference and the resume run here.
    recipe = _recipe_file(tmp_path, epochs=2, checkpoint_every_steps=4)
    ref = _in_process("train", str(recipe), "--out", str(tmp_path / "ref"), "--quiet")
    assert ref.exit_code == 0, ref.output

    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLER,
            "27",
            "train",
            str(recipe),
            "--out",
            str(tmp_path / "crash"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "crash" / "tiny"
    last = _load(run / "last.pt")
    assert (last["epoch"], last["step"], last["in_epoch"]["batch"]) == (1, 24, 9)
    assert not (run / "summary.json").exists()

    resumed = _in_process("train", "--resume", str(run))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "epoch 2, batch 10" in resumed.output
    _assert_same_run(tmp_path / "ref" / "tiny", run)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_last_and_says_how_to_resume(tmp_path, sig, code):
    recipe = _recipe_file(tmp_path, epochs=1000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clfkit", "train", str(recipe), "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        for line in proc.stdout:  # one line per epoch once training runs
            if line.startswith("epoch"):
                break
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    run = tmp_path / "tiny"
    assert f"clfkit train --resume {run}" in err
    assert "Traceback" not in err
    last = _load(run / "last.pt")
    assert last["step"] >= 15 and "optimizer" in last
    # the saved state is a consistent point to continue from
    from clfkit.run.resume import load_resume_state

    resumed = load_resume_state(run)
    assert resumed.epoch == last["epoch"]
    assert len(resumed.history) == resumed.epoch


@pytest.mark.parametrize(
    "extra",
    [
        {},
        # per-image albumentations in a worker process, EMA and early stopping carried in last.pt
        {
            "data__augment": [{"name": "Rotate", "limit": 20, "p": 1.0}],
            "data__workers": 1,
            "train__ema": True,
            "train__early_stopping": True,
        },
    ],
    ids=["plain", "albumentations-workers-ema-early-stopping"],
)
def test_resume_of_interrupted_run_continues_in_process(tmp_path, extra):
    """An in-process SIGINT (flag set from inside the loop) then resume: same as uninterrupted."""
    from clfkit.train import trainer as R
    from clfkit.util.signals import Interrupted
    from clfkit.train.trainer import train

    recipe = tiny_recipe(train__epochs=2, train__deterministic=True, data__image_size=8, **extra)
    ref = train(recipe, tmp_path / "ref", quiet=True)

    with pytest.MonkeyPatch.context() as interrupting:
        sigint_at_step(interrupting, 20)
        with pytest.raises(Interrupted) as e:
            train(recipe, tmp_path / "cut", quiet=True)
    assert e.value.exit_code == 130
    run = tmp_path / "cut" / "tiny"
    last = _load(run / "last.pt")
    assert last["in_epoch"]["batch"] == 5  # epoch 2, after step 20
    if extra:
        assert set(last["extra"]) == {"ema", "early_stopping"}
    res = R.resume_run(run, quiet=True)
    # in-process: same interpreter, same threads: bit-identical too
    _assert_same_run(ref.run_dir, res.run_dir)


def test_rng_state_round_trip_is_weights_only_safe(tmp_path):
    from clfkit.run.checkpoint import load_checkpoint, save_checkpoint
    from clfkit.train.engine.snapshot import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached gaussians in both
    save_checkpoint(tmp_path / "s.pt", {"rng": rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])  # weights_only=True inside
    got = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3))
    assert expected[:3] == got[:3] and torch.equal(expected[3], got[3])


def test_resume_refuses_what_it_cannot_continue(tmp_path, trained_run):
    from clfkit.run.resume import ResumeError
    from clfkit.train.trainer import resume_run

    with pytest.raises(ResumeError, match="does not exist"):
        resume_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResumeError, match="no last.pt"):
        resume_run(tmp_path / "empty")
    with pytest.raises(ResumeError, match="already finished"):
        resume_run(trained_run.run_dir)


def test_resume_cli_rejects_recipe_and_set(tmp_path):
    from click.testing import CliRunner

    from clfkit.cli import cli

    r = CliRunner().invoke(cli, ["train", "x.yaml", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and "--resume" in r.output and isinstance(r.exception, SystemExit)


# --------------------------------------------------------------------------- non-finite loss
def _nan_loss_at(steps: set[int]):
    """A cross-entropy that returns NaN at the given (1-based) calls."""
    import torch.nn as nn

    class Poisoned(nn.CrossEntropyLoss):
        calls = 0

        def forward(self, out, target):
            Poisoned.calls += 1
            loss = super().forward(out, target)
            return loss * float("nan") if Poisoned.calls in steps else loss

    return Poisoned()


def test_nonfinite_loss_stops_with_epoch_step_and_cause(tmp_path, monkeypatch):
    import clfkit.train.trainer as T
    from clfkit.errors import TrainingError
    from clfkit.train import prepare

    monkeypatch.setattr(prepare, "build_loss", lambda recipe, n, splits=None: _nan_loss_at({20}))
    recipe = tiny_recipe(train__epochs=3)
    with pytest.raises(TrainingError) as e:
        T.train(recipe, tmp_path, quiet=True)
    msg = str(e.value)
    assert (
        "epoch 2, step 18" in msg
    )  # 15 steps in epoch 1; loss calls 16-17 are validation and "learning rate" in msg and "on_nonfinite: skip" in msg
    last = _load(tmp_path / "tiny" / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 15  # the last good checkpoint, untouched
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_nonfinite_skip_counts_skipped_batches(tmp_path, monkeypatch):
    import clfkit.train.trainer as T
    from clfkit.train import prepare

    # evaluation calls the loss too (val: 96 images / batch 64 = 2 calls per epoch)
    monkeypatch.setattr(prepare, "build_loss", lambda recipe, n, splits=None: _nan_loss_at({3, 5}))
    res = T.train(tiny_recipe(train__epochs=2, train__on_nonfinite="skip"), tmp_path, quiet=True)
    rows = _metrics(res.run_dir)
    assert rows[0]["nonfinite_skipped"] == 2 and rows[1]["nonfinite_skipped"] == 0
    assert rows[0]["step"] == 13 and rows[1]["step"] == 28
    assert np.isfinite(rows[1]["train_loss"])


def test_format_1_last_pt_loads_as_one_rank(tmp_path):
    """A last.pt written before per-rank states (one process, its state at the top level)."""
    from clfkit.run.checkpoint import save_checkpoint
    from clfkit.train.engine.snapshot import rng_state
    from clfkit.run.resume import load_resume_state

    rng, aug = rng_state(), torch.Generator().manual_seed(5).get_state()
    save_checkpoint(
        tmp_path / "last.pt",
        {
            "resume_format": 1,
            "epoch": 1,
            "step": 24,
            "optimizer": {},
            "rng": rng,
            "history": [{"epoch": 1}],
            "in_epoch": {"batch": 9, "aug_rng": aug, "loss_sum": 1.5, "correct": 3.0, "seen": 288, "lr": 0.1},
        },
    )
    resumed = load_resume_state(tmp_path)
    got_rng, progress = resumed.for_rank(0, 1)
    assert resumed.mid_epoch and torch.equal(got_rng["torch"], rng["torch"]) and progress.rng is got_rng
    assert (progress.batch, progress.seen, progress.loss_sum, progress.nonfinite, progress.lr) == (
        9,
        288,
        1.5,
        0,
        0.1,
    )
    assert torch.equal(progress.aug_rng, aug)
