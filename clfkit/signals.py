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

from clfkit.errors import ClfkitError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(ClfkitError):
    """Training stopped by a signal after saving its state; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = EXIT_CODES.get(signum, 128 + int(signum))


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


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """Turn SIGINT/SIGTERM into a :class:`StopFlag` for the duration of the block. Outside the
    main thread (where Python cannot install handlers) the flag simply never gets set."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in EXIT_CODES}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
