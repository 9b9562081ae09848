"""Who hears about an escalation: pluggable notifiers, chosen by name in the ladder.

`log` writes a JSON line; `webhook` POSTs JSON to `webhook_url` from a worker thread (a
slow receiver never holds the ladder). SMS through the station modem component is not
on the centre yet: it will register itself in NOTIFIERS under "sms".
"""

from __future__ import annotations

import json
import queue
import threading
import urllib.request
from collections.abc import Callable
from typing import Any

from pingan_centre.console.config import CentreConfig
from pingan_centre.console.logs import log

Notifier = Callable[[dict[str, Any]], None]


def _log(message: dict[str, Any]) -> None:
    log("warning", "escalation.notify", **message,
        action="an alarm is not acknowledged: the duty leader must act")


class Webhook:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1000)
        threading.Thread(target=self._run, name="centre-webhook", daemon=True).start()

    def __call__(self, message: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            log("error", "webhook.queue_full", url=self.url, action="the webhook is down")

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            request = urllib.request.Request(
                self.url, data=json.dumps(message, ensure_ascii=False).encode(),
                headers={"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout):
                    pass
            except OSError as exc:
                log("error", "webhook.failed", url=self.url, error=str(exc),
                    action="check the webhook receiver; the step is recorded in the console")


def build(cfg: CentreConfig) -> dict[str, Notifier]:
    notifiers: dict[str, Notifier] = {"log": _log}
    if cfg.webhook_url:
        notifiers["webhook"] = Webhook(cfg.webhook_url)
    return notifiers
