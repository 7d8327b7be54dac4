"""Red team of 2026-12-01: clfkit tune's grid queue, choice() values and study.db, found by
running the CLI the way a hurried user would (Ctrl-C, a continued tune with fewer --trials,
odd choice values, an edited study.db). No trial trains here: the study is driven directly."""
from __future__ import annotations

import pytest

from conftest import refused, tiny_recipe, tiny_recipe_file

optuna = pytest.importorskip("optuna")

LR4 = ["optim.lr=choice(0.001,0.002,0.003,0.004)"]


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory):
    return tiny_recipe_file(tmp_path_factory.mktemp("rt18"), train__epochs=1, data__image_size=8)


def _states(study):
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_a_continued_grid_with_fewer_trials_runs_no_more_than_asked(recipe_file, tmp_path):
    """A Ctrl-C'd grid of 4 left 4 points queued; continuing with --trials 2 ran all of them
    (3 trials for --trials 2). The queue is now cut back to what --trials asks."""
    from clfkit.studies.tune import plan_tune
    from clfkit.studies.tune.results import trial_rows, write_results
    from clfkit.studies.tune.study import open_study, queue_grid, queued

    def plan(trials):
        return plan_tune(recipe_file, LR4, trials, out=tmp_path / "t", sampler="grid")

    (tmp_path / "t").mkdir()
    study = open_study(plan(None))
    assert queue_grid(study, plan(None)) == 4 and queued(study) == 4
    # the first point was stopped by Ctrl-C (a FAIL without an error: it runs again)
    first = study.ask()
    plan(None).dims[0].suggest(first)  # the trial takes its queued value, as a real one does
    stopped_lr = study.get_trials()[0].system_attrs["fixed_params"]["optim.lr"]
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    setup = plan(2)
    assert queue_grid(open_study(setup), setup) == 2
    waiting = [t.system_attrs["fixed_params"]["optim.lr"]
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    assert len(waiting) == 2 and stopped_lr in waiting  # the stopped point runs again, first in line
    assert _states(study).count("WAITING") == 2
    rows = trial_rows(study, setup.dims)
    assert [r["state"] for r in rows] == ["stopped"]  # withdrawn points are no rows; Ctrl-C is not "fail"
    setup.pruner = "none"
    write_results(setup, log=lambda s: None)
    assert (tmp_path / "t" / "trials.csv").read_text().splitlines()[1:] == [f"0,trials/trial-000,{stopped_lr},,0,,stopped"]
    report = (tmp_path / "t" / "report.html").read_text()
    assert "no pruning" in report and "none pruner" not in report and not (tmp_path / "t" / "best.yaml").exists()
    # back to the whole grid: the withdrawn points are queued again, nothing twice
    setup = plan(None)
    assert queue_grid(open_study(setup), setup) == 4 and queued(study) == 4


@pytest.mark.parametrize("space, words", [
    ("model.dropout=choice(0,0.0)", ["0 and 0.0", "same value"]),
    ("train.channels_last=choice(true,1)", ["True and 1", "same value"]),
    ("model.blocks=choice([{channels: 4}],[{channels: 8}])", ["numbers, strings", "[{'channels': 4}]", "sweep"]),
    ("optim.lr=choice(0.1,)", ["empty value", "choice(v1,v2,...)"]),
    ("optim.lr=choice()", ["empty value"]),
])
def test_choice_values_optuna_cannot_tell_apart_or_store_are_refused(recipe_file, tmp_path, space, words):
    """0 and 0.0 both ran as 0 (Optuna stores a choice as the index of the first == value);
    a list choice trained, then the plots died with a traceback (unhashable list)."""
    refused(["--space", *words], "tune", recipe_file, "--sampler", "grid", "--space", space,
            "--out", tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_a_quoted_choice_value_keeps_its_comma(recipe_file, tmp_path):
    from clfkit.studies.sweep.plan import split_top_level
    from clfkit.studies.tune import plan_tune

    assert split_top_level('"a,b", b') == ['"a,b"', "b"]
    assert split_top_level("it's,b") == ["it's", "b"]
    assert split_top_level("'it''s,x', [1,'y,z'], {a: 'p,q'}") == ["'it''s,x'", "[1,'y,z']", "{a: 'p,q'}"]
    setup = plan_tune(recipe_file, ['name=choice("a,b", c)'], None, out=tmp_path / "t", sampler="grid")
    assert setup.dims[0].args == ["a,b", "c"]


@pytest.mark.parametrize("content", [b"garbage\n", b"SQLite format 3\x00" + b"\x00" * 200])
def test_an_unreadable_study_db_is_a_clear_error(recipe_file, tmp_path, content):
    out = tmp_path / "t"
    out.mkdir()
    (out / "study.db").write_bytes(content)
    refused([str(out / "study.db"), "not a readable Optuna study", "--out"],
            "tune", recipe_file, "--sampler", "grid", "--space", LR4[0], "--out", out, max_lines=2)
    assert (out / "study.db").read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == ["study.db"]


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
def test_a_fifo_or_a_device_named_like_an_image_is_skipped_not_read(tmp_path):
    """A FIFO named x.png in a class folder hung the first decode forever (no output, no
    error); a link to /dev/zero would read until memory ran out. Both are now unreadable
    files like any other: listed with the reason, never opened for reading."""
    import os

    import numpy as np
    from PIL import Image

    from clfkit.data.decode_pool import Output, decode_into

    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    paths = [tmp_path / n for n in ("ok.png", "pipe.png", "zero.png")]
    out = Output(len(paths), (3, 4, 4))
    results = decode_into(paths, (4, 4), 3, "squash", out, workers=1)
    assert [r.error for r in results] == [None, "not a regular file: a named pipe (FIFO)",
                                          "not a regular file: a character device (through a symbolic link)"]
    assert out.array()[0].min() == 200 and out.array()[1:].max() == 0


def test_tune_out_into_a_run_folder_is_refused_and_leaves_it_alone(recipe_file, tmp_path):
    """--out runs/fold (a training run) wrote study.db, trials/, best.yaml there and replaced
    the run's own report.html."""
    run = tmp_path / "fold"
    run.mkdir()
    (run / "report.html").write_text("the run's report")
    (run / "recipe.yaml").write_text("name: fold\n")
    refused(["--out", str(run), "not a tune folder", "recipe.yaml, report.html"],
            "tune", recipe_file, "--sampler", "grid", "--space", LR4[0], "--out", run, max_lines=2)
    assert sorted(p.name for p in run.iterdir()) == ["recipe.yaml", "report.html"]
    assert (run / "report.html").read_text() == "the run's report"


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
    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", lambda self, *a, **k: (time.sleep(0.3), shutdown(self, *a, **k)))
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

    small = dict(train__epochs=1, data__image_size=8, data__source__train_size=48, data__source__val_size=12,
                 data__source__test_size=0)
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


def test_a_second_tune_on_the_same_folder_is_refused_while_the_first_runs(recipe_file, tmp_path):
    """The same command started twice: the second marked the first's running trial failed,
    and the first died with a traceback (ValueError: Cannot tell a FAIL trial)."""
    import subprocess
    import sys

    out = tmp_path / "t"
    out.mkdir()
    holder = ("import fcntl, json, os, sys, time\n"
              "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "os.write(fd, json.dumps({'pid': os.getpid(), 'command': 'clfkit tune first'}).encode())\n"
              "print('locked', flush=True)\n"
              "time.sleep(60)\n")
    first = subprocess.Popen([sys.executable, "-c", holder, str(out / ".clfkit.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        refused([f"cannot tune into {out}", "another clfkit tune is running there", "clfkit tune first",
                 "run the same command again"],
                "tune", recipe_file, "--sampler", "grid", "--space", LR4[0], "--out", out, max_lines=2)
    finally:
        first.kill()
        first.wait()
    assert not (out / "study.db").exists()
