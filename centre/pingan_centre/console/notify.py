"""Who hears about an escalation: pluggable notifiers, chosen by name in the ladder.

`log` writes a JSON line; `webhook` POSTs JSON to `webhook_url` from a worker thread (a
slow receiver never holds the ladder); the runtime starts and closes it. `sms` texts
whoever the duty rota has on duty through a modem on the centre PC (console/sms.py,
built by the runtime like the webhook when `[sms] port` is set).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from pingan_centre.console.logs import log

Notifier = Callable[[dict[str, Any]], None]


def log_step(message: dict[str, Any]) -> None:
    log("warning", "escalation.notify", **message,
        action="an alarm is not acknowledged: the duty leader must act")


class Webhook:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=1000)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="centre-webhook", daemon=True)

    def start(self) -> Webhook:
        self._thread.start()
        return self

    def close(self) -> None:
        """Idempotent; bounded by one POST's timeout. What is still queued is not sent
        (each step is recorded in the console and the log)."""
        self._closed.set()
        with contextlib.suppress(queue.Full):  # full: the worker sees _closed after its POST
            self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(self.timeout + 1)

    def __call__(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            log("error", "webhook.queue_full", url=self.url, action="the webhook is down")

    def _run(self) -> None:
        while not self._closed.is_set():
            message = self._queue.get()
            if message is None:
                return
            request = urllib.request.Request(
                self.url, data=json.dumps(message, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout):
                    pass
            except OSError as exc:
                log("error", "webhook.failed", url=self.url, error=str(exc),
                    action="check the webhook receiver; the step is recorded in the console")

