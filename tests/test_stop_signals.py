"""Stop signals (clfkit.util.signals): Ctrl-C and SIGTERM during a decode, a run, a sweep or
clfkit's own exit end cleanly, with state saved and no traceback.
"""

from __future__ import annotations

from conftest import tiny_recipe
import pytest
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
import yaml


def test_ctrl_c_during_the_pool_decode_leaves_no_traceback_from_the_pool(monkeypatch, tmp_path):
    """Ctrl-C during the first decode printed "InvalidStateError: CANCELLED" from the pool's
    own thread: map's cleanup cancelled the queued futures, then stopping the workers made
    Python 3.11's pool mark those very futures broken. Some tasks are still queued here when
    Ctrl-C comes (the workers are slowed down; they inherit the patch by fork)."""
    import _thread
    import threading
    import time

    from clfkit.data import decode_pool

    def slow(paths, start, stop, *rest, **kw):
        time.sleep(0.2)
        return [decode_pool.FileResult("x")] * (stop - start)

    monkeypatch.setattr(decode_pool, "_decode_range", slow)
    # a main thread slow to reach shutdown (busy, or the GIL elsewhere): the pool's thread sees
    # the stopped workers first, the order that raced into the traceback 1 run in 10
    from concurrent.futures import ProcessPoolExecutor

    shutdown = ProcessPoolExecutor.shutdown
    monkeypatch.setattr(
        ProcessPoolExecutor, "shutdown", lambda self, *a, **k: (time.sleep(0.3), shutdown(self, *a, **k))
    )
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    paths = [tmp_path / f"{i}.png" for i in range(decode_pool.TASK_FILES * 12)]
    out = decode_pool.Output(len(paths), (3, 2, 2))
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        decode_pool.decode_into(paths, (2, 2), 3, "squash", out, workers=2)
    timer.join()
    time.sleep(0.2)  # the pool's thread has finished (shutdown joined it); nothing it raised is lost
    assert errors == []


@pytest.mark.parametrize("other_thread", [False, True])
def test_ctrl_c_while_the_pool_forks_is_held_until_the_fork_is_done(other_thread):
    """A Ctrl-C landing in Python's at-fork hooks was dropped ("Exception ignored in
    _releaseLock") and the run trained on; held over the fork, it arrives just after. With
    another thread alive (torch's, a reader thread) a blocked signal mask did not hold it: the
    kernel handed SIGINT to that thread and the main thread raised inside the block."""
    import os
    import signal
    import threading
    import time

    from clfkit.data.decode_pool import _sigint_held

    done = threading.Event()
    waiter = threading.Thread(target=done.wait)
    if other_thread:
        waiter.start()
    handler_before = signal.getsignal(signal.SIGINT)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with _sigint_held():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # a pending Python handler runs between bytecodes
                reached.append("after the signal")  # not raised inside the block
    finally:
        done.set()
        if other_thread:
            waiter.join()
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_a_second_ctrl_c_while_clfkit_exits_after_a_stop_is_ignored(monkeypatch):
    """After "interrupted" (exit 130) a second SIGINT landed in the atexit clean-up: a
    KeyboardInterrupt traceback, and the temp-folder removal cut short."""
    import signal
    import warnings

    from clfkit import cli

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets clfkit's
    monkeypatch.setattr(warnings, "filters", list(warnings.filters))

    def stopped(**kw):
        raise SystemExit(130)

    monkeypatch.setattr(cli, "cli", stopped)
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):
            cli.main()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    monkeypatch.setattr(cli, "cli", lambda **kw: None)  # a normal end leaves Ctrl-C alone
    cli.main()
    assert signal.getsignal(signal.SIGINT) is before


def test_an_error_after_ctrl_c_is_a_stop_not_a_traceback(monkeypatch, tmp_path):
    """Ctrl-C during torch.compile's first step (train.compile on CPU builds C++) reaches g++
    too: it died, inductor raised CppCompileError, and clfkit printed a traceback and exited 1.
    An error raised once a stop signal came is now that stop: exit 130 and what to do. No
    last.pt is written then: the broken step may have run its forward pass (BatchNorm
    statistics moved), so a resume from that moment would not match an unbroken run."""
    import os
    import signal

    from clfkit.train import trainer
    from clfkit.util.signals import Interrupted

    def compiler_killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # caught by the trainer's handler: only the flag is set
        raise RuntimeError("C++ compile error\ncommand: g++ ...")

    small = dict(
        train__epochs=1,
        data__image_size=8,
        data__source__train_size=48,
        data__source__val_size=12,
        data__source__test_size=0,
    )
    monkeypatch.setattr(trainer, "train_one_epoch", compiler_killed)
    with pytest.raises(Interrupted) as stop:
        trainer.train(tiny_recipe(**small), tmp_path, quiet=True)
    assert stop.value.exit_code == 130
    message = str(stop.value)
    assert "SIGINT received" in message and "RuntimeError: C++ compile error" in message
    assert "no checkpoint was saved yet" in message and str(tmp_path / "tiny") in message
    assert not (tmp_path / "tiny" / "last.pt").exists()
    monkeypatch.setattr(trainer, "train_one_epoch", lambda *a, **k: 1 / 0)  # no signal: the error itself
    with pytest.raises(ZeroDivisionError):
        trainer.train(tiny_recipe(**small), tmp_path, quiet=True)


# --------------------------------------------------------------------------- Ctrl-C mid-epoch
def test_ctrl_c_mid_epoch_says_it_saved_not_that_a_step_broke(monkeypatch, tmp_path):
    """The mid-epoch stop (a step finished, last.pt saved, Interrupted raised) was caught by the
    'error after Ctrl-C' path and reworded as 'stopped ... while a step was running
    (Interrupted: ...; the signal stops the compiler torch.compile runs too)' without compile."""
    from conftest import sigint_at_step, tiny_recipe

    from clfkit.train import trainer
    from clfkit.util.signals import Interrupted

    sigint_at_step(monkeypatch, 3)
    with pytest.raises(Interrupted) as stop:
        trainer.train(tiny_recipe(train__epochs=2), tmp_path, quiet=True)
    message = str(stop.value)
    assert "while a step was running" not in message and "compile" not in message, message
    assert "saved" in message and (tmp_path / "tiny" / "last.pt").exists()
    assert message.count("SIGINT received") == 1, message


ROOT = Path(__file__).resolve().parents[1]


TINY = {
    "name": "tiny",
    "data": {
        "source": {"name": "shapes", "num_classes": 2, "train_size": 64, "val_size": 16, "test_size": 16},
        "image_size": 8,
    },
    "model": "linear",
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"epochs": 1, "batch_size": 16},
}


def write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- row 5: signals in a sweep
SLOW = {
    **TINY,
    "name": "slow",
    "model": {"name": "mlp", "hidden": [64]},
    "data": {**TINY["data"], "source": {**TINY["data"]["source"], "train_size": 128}},
    "train": {"epochs": 500, "batch_size": 16},
}


@pytest.mark.parametrize(
    "jobs, sig, code, group",
    [("1", signal.SIGINT, 130, False), ("2", signal.SIGTERM, 143, False), ("2", signal.SIGINT, 130, True)],
)
def test_signal_stops_the_whole_sweep_resumable(tmp_path, jobs, sig, code, group):
    """group: Ctrl-C in a terminal, to every process (red team 19: with --jobs 2 a worker whose
    run stopped took the next queued run before the parent's stop reached it, and started it)."""
    recipe = write(tmp_path / "slow.yaml", SLOW)
    out = tmp_path / "sw"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLFKIT_PLUGINS": "none"}
    cmd = [
        sys.executable,
        "-m",
        "clfkit",
        "sweep",
        str(recipe),
        "--out",
        str(out),
        "--jobs",
        jobs,
        "--grid",
        "optim.lr=0.01,0.02,0.03",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=group,
    )
    deadline = time.time() + 120
    while not list(out.glob("*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # until a run has trained an epoch
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    t0 = time.time()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, output
    assert time.time() - t0 < 60, output
    assert "Traceback" not in output
    assert "run the same `clfkit sweep` command again" in output and signal.Signals(sig).name in output
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert 1 <= len(runs) <= int(jobs), output  # no queued run started
    for run in runs:  # each stopped run can resume
        assert (run / "last.pt").is_file() and not (run / "summary.json").exists(), output
    assert (out / "sweep.md").is_file()
