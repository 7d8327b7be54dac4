"""Giving freed heap memory back to the system (glibc's ``malloc_trim``).

glibc keeps freed memory in its heap for reuse; large buffers freed between small ones that
stay allocated leave holes it cannot return, so a long CPU run's RSS grows past what it uses.
``malloc_trim(0)`` releases the free pages inside the heap as well as at its top. Elsewhere
(musl, macOS, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return the heap's free pages to the system, where the C library can (glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
