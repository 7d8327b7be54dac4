"""clfkit.util.signals: which signal turns a stop request into "stop now"."""

from __future__ import annotations

import os
import signal

import pytest

from clfkit.util.signals import catch_stop_signals


def test_a_sigint_after_a_sigterm_is_a_stop_request_and_a_second_sigint_stops_now():
    """Was: a --jobs worker, stopped by its parent's SIGTERM, then reached by the terminal's
    (first) Ctrl-C, took it for a second Ctrl-C and died with KeyboardInterrupt instead of
    saving its trial (the tune printed "interrupted" and no tables)."""
    with catch_stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: only the flag changes
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: stop now


def test_sigterm_twice_stays_a_stop_request():
    with catch_stop_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
