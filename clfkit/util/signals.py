"""SIGINT / SIGTERM during training: finish the current step, save ``last.pt``, say how to
resume, exit 130 (SIGINT) or 143 (SIGTERM).

The handler only sets a flag; the trainer looks at it after every optimizer step, so the
weights are never saved halfway through an update. Under DDP the ranks agree on it every
``distributed.STOP_CHECK_EVERY`` steps and at each epoch end instead, and all stop together. A second Ctrl-C while the first is being
handled stops at once (KeyboardInterrupt), leaving the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

from clfkit.errors import Interrupted  # noqa: F401 - defined in errors.py, importable from here too

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopFlag:
    """Set by the signal handler, read by the trainer between steps."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    @property
    def pending(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


_ACTIVE: list[StopFlag] = []  # the flags of the blocks now open, outermost first


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM into a :class:`StopFlag` for the duration of the block. Outside the
    main thread (where Python cannot install handlers) the flag simply never gets set.

    Blocks nest (a sweep around each run's training): a signal sets every open block's flag,
    and a block opened after a signal starts with its flag already set, so a run started
    (or still loading its data) when Ctrl-C came stops at its first step instead of training
    on unnoticed."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    flag.signum = next((f.signum for f in reversed(_ACTIVE) if f.pending), None)

    def handler(signum, frame):
        if flag.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        # (a SIGINT after a SIGTERM is the first Ctrl-C: a --jobs worker gets the group's Ctrl-C
        # after the SIGTERM its parent's stop sent it, and must still save its trial)
        for open_flag in _ACTIVE:
            open_flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    _ACTIVE.append(flag)
    try:
        yield flag
    finally:
        _ACTIVE.remove(flag)
        for s, h in previous.items():
            signal.signal(s, h)
