"""A part of the runtime that does one job every few seconds from a named thread of its
own: the escalation ladder, the clip uploads' stall check, the CAP folder.

Each round gets a fresh database connection (a dropped one is not reused); a failing
round is logged with what to do and tried again next round; close() ends it within one
round's work.
"""

from __future__ import annotations

import threading
from typing import Self

from django.db import close_old_connections, connection

from pingan_centre.console.logs import log


class Periodic:
    """Subclasses give `work()`, the thread's name, the period and their log's prefix."""

    def __init__(self, name: str, every_s: float, *, event: str, retry: str,
                 at_once: bool = False) -> None:
        self.every_s = every_s
        self._event, self._retry, self._at_once = event, retry, at_once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def work(self) -> None:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        """For a long round (a folder of files): stop between items."""
        return self._stop.is_set()

    def start(self) -> Self:
        self._thread.start()
        return self

    def close(self) -> None:
        """Idempotent; bounded by one round's work."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
            if self._thread.is_alive():
                log("warning", f"{self._event}.close_timeout", action="a database call hangs")

    def _run(self) -> None:
        try:
            wait = not self._at_once
            while not (self._stop.wait(self.every_s) if wait else self._stop.is_set()):
                wait = True
                close_old_connections()
                try:
                    self.work()
                except Exception as exc:
                    log("error", f"{self._event}.failed", error=repr(exc), action=self._retry)
        finally:
            connection.close()
