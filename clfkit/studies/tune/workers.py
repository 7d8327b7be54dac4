"""``clfkit tune --jobs N``: N worker processes on one study, and one stop signal for all of
them, as ``clfkit sweep --jobs`` has (clfkit.studies.sweep.running).

A terminal's Ctrl-C reaches every process of the group; a ``kill`` reaches the tune process
alone. Either way the parent's stop flag is set, the parent sets an Event every worker
watches, and each worker stops its trial as SIGTERM would: the trial saves last.pt, is
marked stopped in the study (it runs again when the tune is continued), and the worker
starts no further trial. The parent then writes the tables for the trials so far.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

from clfkit.errors import ClfkitError
from clfkit.util.signals import Interrupted, StopFlag, catch_stop_signals
from clfkit.studies.tune.space import TuneError
from clfkit.studies.tune.study import TuneSetup
from clfkit.studies.tune.trials import optimize

# In a worker process: the parent's stop Event, and whether a search is running here (its
# signal handlers installed, so a SIGTERM to itself stops it instead of killing the process).
_STOPPING: Any = None
_BUSY = False


def _note_signal(signum: int, frame: Any) -> None:
    """An idle worker's handler: a Ctrl-C to the whole group must not kill it (a dead worker
    breaks the pool, and the parent would lose the results of the others)."""


def _worker_init(stopping: Any) -> None:
    global _STOPPING
    _STOPPING = stopping
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _note_signal)

    def watch() -> None:
        stopping.wait()
        if _BUSY:
            os.kill(os.getpid(), signal.SIGTERM)  # the search's own handler: the trial saves last.pt

    threading.Thread(target=watch, daemon=True).start()


def _work(setup: TuneSetup) -> dict[str, Any]:
    """One worker's search (clfkit.studies.tune.optimize); what ended it, as plain data (a clfkit
    exception does not always survive pickling back to the parent)."""
    global _BUSY
    with catch_stop_signals() as stop:
        _BUSY = True
        try:
            if _STOPPING is not None and _STOPPING.is_set():
                return {"stopped": None}
            optimize(setup, stop)
            return {"stopped": stop.signum}
        except Interrupted as e:
            return {"stopped": e.signum}
        except ClfkitError as e:
            return {"error": str(e)}
        finally:
            _BUSY = False


def run_jobs(setup: TuneSetup, jobs: int, stop: StopFlag, log: Callable[[str], None]) -> int | None:
    """``jobs`` worker processes share the study through its SQLite file; the signal that
    stopped them (None: they ran to the end). The parent polls for its stop flag, since a
    signal does not wake a blocked wait."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # each worker's sampler gets its own seed, else all would propose the same values; the
    # total may end up to jobs-1 over --trials (workers check the count when a trial ends)
    workers = [
        TuneSetup(**{**setup.__dict__, "threads": threads, "seed": setup.seed + i}) for i in range(jobs)
    ]
    ctx = get_context("spawn")  # no forked torch state
    stopping = ctx.Event()
    stopped, errors = None, []
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(stopping,)) as pool:
        pending = {pool.submit(_work, w) for w in workers}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for fut in done:
                    res = fut.result()
                    errors += [res["error"]] if "error" in res else []
                    stopped = stopped or res.get("stopped")
                if (stop.pending or stopped or errors) and not stopping.is_set():
                    stopping.set()  # every worker stops its trial (last.pt saved) and starts no other one
        except BrokenProcessPool:
            stopping.set()
            if stop.pending:  # a Ctrl-C while a worker was still starting (before its handlers)
                return stop.signum
            raise TuneError(
                "a tune worker process died (killed, or out of memory); its trial is marked stopped "
                "and runs again when you run the same command"
            ) from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop now
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if errors:
        raise TuneError(errors[0])
    return stop.signum or stopped
