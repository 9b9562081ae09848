"""What staff see and hear after a press (LED, siren, log line), once the alarm is stored.

Python runs one thread at a time: feedback started at the press would compete with the
outbox writer and the uplink for the interpreter while the alarm is on its way. So it
runs on its own `feedback` thread once the alarm's commit resolved (by then the uplink has
it), or after `wait_s` if the SD card is slow: a person never notices 50 ms, and a stuck
card never silences the siren.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger("edge.feedback")

WAIT_S = 0.05
QUEUE_MAX = 64


class Feedback:
    def __init__(self, wait_s: float = WAIT_S) -> None:
        self._wait_s = wait_s
        self._queue: queue.Queue[tuple[Future[Any], float, Callable[[], None]] | None] = \
            queue.Queue(QUEUE_MAX)
        self._thread = threading.Thread(target=self._run, name="feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def after(self, future: Future[Any], action: Callable[[], None]) -> None:
        """Run `action` once `future` is done, or `wait_s` from now, whichever is first."""
        try:
            self._queue.put_nowait((future, time.monotonic() + self._wait_s, action))
        except queue.Full:  # a flood of presses: feedback now rather than never
            self._do(action)

    def close(self, timeout: float = 1.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            future, due, action = item
            concurrent.futures.wait([future], timeout=max(0.0, due - time.monotonic()))
            self._do(action)

    @staticmethod
    def _do(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # the LED or the loudspeaker failing must not end feedback
            logger.exception("feedback.failed")
