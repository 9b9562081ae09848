"""Wall-clock time for what people read, and whether the kernel thinks it is synced.

A Pi has no real-time clock: until NTP (or the modem) sets the time, the wall clock
can be days off. Events carry a flag so the township knows whether to trust `ts`.
Timeouts and back-offs use `time.monotonic()` everywhere else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import time

_TIME_ERROR = 5  # adjtimex(2): "clock not synchronized"
# PyDLL: the call keeps the GIL (a quick system call; letting go of the GIL on the alarm
# path hands it to another thread for a while).
_libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# Every event asks; the answer changes once or twice a day. Asked again after this long.
_RECHECK_S = 1.0
_known: tuple[float, bool] | None = None


def clock_synced() -> bool:
    """True when the kernel reports the clock as synchronised (adjtimex, read only; the
    answer is at most a second old)."""
    global _known
    now = time.monotonic()
    known = _known
    if known is not None and now - known[0] < _RECHECK_S:
        return known[1]
    buf = ctypes.create_string_buffer(512)  # larger than struct timex; modes=0 reads only
    try:
        state = _libc.adjtimex(buf)
    except AttributeError:  # not Linux
        return False
    synced = bool(state >= 0 and state != _TIME_ERROR)
    _known = (now, synced)
    return synced


def now_iso() -> str:
    """UTC wall-clock time, millisecond precision, ISO 8601 with a Z suffix."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
