"""The centre's running parts, owned by one object: what runs besides the web requests.

`CentreRuntime` builds and starts, in this order: the change reader for the live screens
(`live.Changes`), the webhook's sender and the SMS modem (each when configured), the
escalation ladder, the MQTT ingest and the CAP folder's watcher (when configured);
`close()` stops them in the reverse order. It is the `Effects` that the web requests
hand to `lifecycle.act`: a command goes out through the ingest's MQTT client and a change
wakes the screens.

Who owns it: in `serve`, the ASGI application (`asgi.CentreApp`) makes one on
`lifespan.startup`, puts it in the lifespan state, and closes it on `lifespan.shutdown`;
the server copies that state into every request's scope, and `of(request)` is the one
way a view reaches it. In `ingest` (no web) the command makes one and closes it on a
signal. No part is a module-level global: two runtimes in one process (a test) do not
share anything.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, Protocol, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from pingan_centre.console.cap.watch import Watcher
from pingan_centre.console.cliplib import Resumer
from pingan_centre.console.config import CentreConfig
from pingan_centre.console.escalation import Ladder
from pingan_centre.console.ingest import Ingest
from pingan_centre.console.live import Changes
from pingan_centre.console.logs import log
from pingan_centre.console.notify import Notifier, Webhook, log_step
from pingan_centre.console.sms import SmsNotifier

STATE_KEY = "pingan.centre"  # the runtime's key in the ASGI lifespan state


class Part(Protocol):
    def close(self) -> None: ...


P = TypeVar("P", bound=Part)


class StartupFailed(Exception):
    """A part did not start; the ones started before it are closed again."""


class CentreRuntime:
    def __init__(self, cfg: CentreConfig, *, ingest: bool = True, live: bool = True,
                 tick_s: float = 1.0) -> None:
        self.cfg = cfg
        self.with_ingest = ingest
        self.with_live = live
        self.tick_s = tick_s
        self.changes: Changes | None = None
        self.webhook: Webhook | None = None
        self.sms: SmsNotifier | None = None
        self.ladder: Ladder | None = None
        self.ingest: Ingest | None = None
        self.clips: Resumer | None = None
        self.cap_watch: Watcher | None = None
        self._stack: ExitStack | None = None

    def start(self) -> CentreRuntime:
        """Start every part, or none: on a failure what was started is closed and
        StartupFailed says which part failed and why."""
        if self._stack is not None:
            raise RuntimeError("the centre runtime is started already")
        try:
            with ExitStack() as stack:
                if self.with_live:
                    self.changes = self._start(stack, "the live screens' change reader",
                                               lambda: Changes().start())
                notifiers: dict[str, Notifier] = {"log": log_step}
                if self.cfg.webhook_url:
                    url = self.cfg.webhook_url
                    self.webhook = self._start(stack, "the webhook",
                                               lambda: Webhook(url).start())
                    notifiers["webhook"] = self.webhook
                if self.cfg.sms.port:
                    sms = self.cfg.sms
                    self.sms = self._start(stack, "the SMS modem",
                                           lambda: SmsNotifier(sms, self).start())
                    notifiers["sms"] = self.sms
                self.ladder = self._start(stack, "the escalation ladder", lambda: Ladder(
                    self.cfg.escalation, notifiers, self, every_s=self.tick_s).start())
                if self.with_ingest:
                    self.ingest = self._start(stack, "the MQTT ingest", lambda: Ingest(
                        self.cfg, self.changed).start())
                    # Clip uploads that stalled start again (cliplib); it sends through
                    # the ingest, so it runs only beside one.
                    self.clips = self._start(stack, "the clip uploads' ticker",
                                             lambda: Resumer(self).start())
                if self.cfg.cap.watch_dir:
                    self.cap_watch = self._start(stack, "the CAP folder's watcher",
                                                 lambda: Watcher(self.cfg.cap, self).start())
                self._stack = stack.pop_all()
        except BaseException:
            self.changes = self.webhook = self.sms = self.ladder = self.ingest = None
            self.clips = self.cap_watch = None
            raise
        log("info", "centre.started", parts=self.parts())
        return self

    @staticmethod
    def _start(stack: ExitStack, name: str, make: Callable[[], P]) -> P:
        try:
            part = make()
        except Exception as exc:
            raise StartupFailed(f"{name} did not start: {exc}") from exc
        stack.callback(part.close)
        return part

    def close(self) -> None:
        """Idempotent; each part's close is bounded (its threads are joined with a
        timeout), so shutdown is too."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        stack.close()
        log("info", "centre.stopped")

    def end_streams(self) -> None:
        """The web server is stopping: the live screens' streams end now (idempotent)."""
        if self.changes is not None:
            self.changes.end_streams()

    def __enter__(self) -> CentreRuntime:
        return self.start()

    def __exit__(self, *_: Any) -> None:
        self.close()

    def parts(self) -> list[str]:
        named = {"changes": self.changes, "webhook": self.webhook, "sms": self.sms,
                 "ladder": self.ladder, "ingest": self.ingest, "clips": self.clips,
                 "cap_watch": self.cap_watch}
        return [name for name, part in named.items() if part is not None]

    # --- Effects, for the requests' lifecycle.act and the ladder ------------------------

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        return self.ingest.send(topic, payload) if self.ingest is not None else False

    def publish_volatile(self, topic: str, body: bytes) -> bool:
        """QoS 0, nothing kept: live voice (console/voice.py). False with no link."""
        return self.ingest.publish_volatile(topic, body) if self.ingest is not None else False

    def changed(self) -> None:
        if self.changes is not None:
            self.changes.notify()


def of(request: HttpRequest) -> CentreRuntime:
    """The runtime serving this request: from the ASGI lifespan state in its scope."""
    scope: dict[str, Any] = getattr(request, "scope", {})
    runtime = scope.get("state", {}).get(STATE_KEY)
    if not isinstance(runtime, CentreRuntime):
        raise ImproperlyConfigured(
            "no centre runtime in this request: serve the console with "
            "`pingan-centre serve` (its ASGI app, lifespan on)")
    return runtime
