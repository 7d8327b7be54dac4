"""Running a sweep's trials, one after another or in worker processes, with one stop
signal for all of them (a stopped sweep stays resumable)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

from clfkit.errors import ClfkitError
from clfkit.util.safe_names import child_folder
from clfkit.recipe import Recipe
from clfkit.run.run_folder import LOCK_NAME, RunFolder, run_lock
from clfkit.util.signals import Interrupted, StopFlag, catch_stop_signals
from clfkit.studies.sweep.plan import Sweep, SweepError, Trial, check_jobs, check_same_recipe, plan_sweep
from clfkit.studies.sweep.tables import write_manifest, write_tables
from clfkit.run.tracking import parent_run, require_trackers


# --------------------------------------------------------------------------- running
def run_trial(recipe_dict: dict, run_dir: str, quiet: bool = True, threads: int = 0) -> dict:
    """Train one combination into ``run_dir`` (a worker process's entry point): resume it
    from last.pt when it was started before and got that far, else start it afresh."""
    import torch

    from clfkit.train.trainer import train

    if threads:
        torch.set_num_threads(threads)
    # the run folder, the rmtree below included, never reaches outside the sweep folder
    run = child_folder(Path(run_dir).parent, Path(run_dir).name, "sweep run name")
    recipe = Recipe.model_validate(recipe_dict)
    folder = RunFolder(run)
    if run.exists() and not folder.finished:
        if folder.last.is_file():
            from clfkit.train.trainer import resume_run

            return {"summary": resume_run(run, quiet=quiet).summary, "resumed": True}
        if any(run.iterdir()) and not folder.recipe.is_file():
            raise SweepError(f"{run} exists and is not a clfkit run folder; not touching it")
        # a run started before that never got to last.pt: restart it, under its lock (another
        # sweep process may be training it right now) and keeping the lock file we hold
        with run_lock(run, "restart"):
            for child in run.iterdir():
                if child.name != LOCK_NAME:
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            return {"summary": train(recipe, run_dir=run, quiet=quiet).summary, "resumed": False}
    return {"summary": train(recipe, run_dir=run, quiet=quiet).summary, "resumed": False}


def _run_trial_safe(recipe_dict: dict, run_dir: str, quiet: bool, threads: int) -> dict:
    """run_trial, with a failure returned rather than raised (one bad run must not end the
    sweep); a stop signal ends the run resumable (last.pt) and is returned as ``interrupted``."""
    global _BUSY
    t0 = time.perf_counter()
    with catch_stop_signals():  # a signal before training starts still stops it (signals.py)
        _BUSY = True
        try:
            if _STOPPED_HERE or (_STOPPING is not None and _STOPPING.is_set()):  # queued before the stop
                return {"ok": False, "not_started": True, "error": "", "seconds": 0.0}
            res = run_trial(recipe_dict, run_dir, quiet, threads)
            res["ok"] = True
        except Interrupted as e:
            _stopped_here()  # a Ctrl-C reached this worker: the sweep is stopping, start nothing more
            res = {"ok": False, "interrupted": e.signum, "error": str(e)}
        except ClfkitError as e:
            res = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug, but the other runs still deserve to finish
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        finally:
            _BUSY = False
    res["seconds"] = time.perf_counter() - t0
    return res


# In a --jobs worker process: the parent's "stop" event, whether a run is in progress, and
# whether this worker saw the stop signal itself (Ctrl-C reaches every process of the group at
# once; the parent's event follows at its next poll, after this worker may have taken the next run).
_STOPPING: Any = None
_BUSY = False
_STOPPED_HERE = False


def _stopped_here(*_: Any) -> None:
    global _STOPPED_HERE
    _STOPPED_HERE = True


def _worker_init(stopping: Any) -> None:
    """A --jobs worker: a Ctrl-C while idle (the terminal sends it to every process; a run in
    progress handles it itself) only means "start no further run", and when the parent stops the
    sweep, stop the run in progress as SIGTERM would: it saves last.pt and returns."""
    global _STOPPING
    _STOPPING = stopping
    signal.signal(signal.SIGINT, _stopped_here)

    def watch() -> None:
        stopping.wait()
        if _BUSY:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def run_sweep(
    recipe_path: str | Path,
    grid: list[str] | tuple[str, ...] = (),
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out: Optional[str | Path] = None,
    jobs: int = 1,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    top: int = 10,
    seeds: Optional[int] = None,
) -> Sweep:
    """Plan, train what is not finished (``jobs`` at a time), and write the sweep tables.
    SIGINT/SIGTERM stops the whole sweep: no further run starts, the runs in progress save
    their last.pt, the tables are written, and :class:`Interrupted` says how to continue."""
    check_jobs(jobs, "runs")
    sweep = plan_sweep(recipe_path, grid, overrides, out, seeds)
    for t in sweep.trials:
        check_same_recipe(t)
        t.status = (
            "done" if RunFolder(t.run_dir).finished else ("unfinished" if t.run_dir.exists() else "new")
        )
    todo = [t for t in sweep.trials if t.status != "done"]
    tracked = any("mlflow" in t.recipe.train.track for t in sweep.trials)
    require_trackers(["mlflow"] if tracked else [])  # a store that cannot be used: before the sweep folder
    sweep.out.mkdir(parents=True, exist_ok=True)
    write_manifest(sweep)
    n = len(sweep.trials)
    log(
        f"sweep {sweep.out}: {n} run(s), {n - len(todo)} already finished, {len(todo)} to train"
        + (f", {jobs} at a time" if jobs > 1 and len(todo) > 1 else "")
    )
    # MLflow (when a run tracks to it): the sweep is the parent run of its runs (clfkit.run.tracking)
    with (
        parent_run(
            f"sweep {sweep.out.name}",
            {"recipe": str(recipe_path), "grid": " ".join(grid)},
            sweep.out,
            tracked,
        ),
        catch_stop_signals() as stop,
    ):
        if jobs <= 1 or len(todo) <= 1:
            for i, t in enumerate(todo, 1):
                if stop.pending:
                    break
                log(f"[{i}/{len(todo)}] {t.name}" + (" (resuming)" if t.status == "unfinished" else ""))
                _record(t, _run_trial_safe(t.recipe.to_dict(), str(t.run_dir), quiet, 0), log)
        else:
            _run_parallel(todo, jobs, log, stop)
        write_tables(sweep, top=top)
    if stop.pending:
        raise Interrupted(_stopped_message(sweep, stop.name), stop.signum)
    return sweep


def _stopped_message(sweep: Sweep, signame: str) -> str:
    stopped = [t.name for t in sweep.trials if t.status == "interrupted"]
    waiting = [t.name for t in sweep.trials if t.status in ("new", "unfinished")]
    return (
        f"{signame} received: sweep {sweep.out} stopped; "
        + (f"{len(stopped)} run(s) saved their last.pt mid-way ({', '.join(stopped)}); " if stopped else "")
        + f"{len(waiting)} run(s) not started. To continue, run the same `clfkit sweep` command "
        f"again: finished runs are skipped, stopped ones resume from their last.pt."
    )


def _run_parallel(todo: list[Trial], jobs: int, log: Callable[[str], None], stop: StopFlag) -> None:
    """Each run in its own process (spawned: no forked torch state), the cores split evenly.
    The parent polls for its stop flag, since a signal does not wake a blocked wait."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    stopping = ctx.Event()
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(stopping,)
    ) as pool:
        futures = {
            pool.submit(_run_trial_safe, t.recipe.to_dict(), str(t.run_dir), True, threads): t for t in todo
        }
        log(f"started {len(todo)} run(s) in {jobs} processes, {threads} thread(s) each")
        pending, finished = set(futures), 0
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.cancelled():
                        continue
                    finished += 1
                    log(f"[{finished}/{len(todo)}] {futures[fut].name}")
                    _record(futures[fut], fut.result(), log)
                if stop.pending and not stopping.is_set():
                    stopping.set()  # the runs in progress save last.pt; queued ones do not start
                    for fut in pending:
                        fut.cancel()
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _record(t: Trial, res: dict, log: Callable[[str], None]) -> None:
    t.seconds = res.get("seconds", 0.0)
    if res["ok"]:
        t.status = "done"
        s = res["summary"]
        val = s.get("best_val_acc")
        log(
            f"    done in {t.seconds:.0f}s: best val acc {val:.4f} (epoch {s.get('best_epoch')})"
            if val is not None
            else f"    done in {t.seconds:.0f}s"
        )
    elif res.get("not_started"):
        log("    not started: the sweep is stopping")
    elif res.get("interrupted"):
        t.status = "interrupted"
        log(f"    stopped after {t.seconds:.0f}s; its last.pt resumes it")
    else:
        t.status, t.error = "failed", res["error"]
        log(f"    FAILED: {t.error.splitlines()[0] if t.error else ''}")
