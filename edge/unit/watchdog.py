"""systemd notification: READY once the station runs, WATCHDOG pings while it is healthy.

With `Type=notify` and `WatchdogSec=` in the unit, systemd restarts a station whose
outbox writer or uplink has died or hung. Without $NOTIFY_SOCKET (simulator, tests that
do not ask for it) this does nothing and starts no thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from edge.logs import log

logger = logging.getLogger("edge.watchdog")


def _notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log(logger, "warning", "watchdog.notify_failed", error=str(exc))
            return False
    return True


class Watchdog:
    def __init__(self, healthy: Callable[[], bool]) -> None:
        self._healthy = healthy
        usec = os.environ.get("WATCHDOG_USEC", "")
        self._interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> None:
        _notify("READY=1\nSTATUS=running")
        if self._interval and os.environ.get("NOTIFY_SOCKET"):
            self._thread.start()

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            if self._healthy():
                _notify("WATCHDOG=1")
            else:
                log(logger, "error", "watchdog.unhealthy",
                    action="not pinging systemd: it will restart the station")

    def close(self) -> None:
        if self._stop.is_set():
            return
        _notify("STOPPING=1")
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
