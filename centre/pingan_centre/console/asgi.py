"""The ASGI application: Django's, wrapped to own the centre's running parts.

Served by uvicorn with `lifespan="on"` (server-sent events need a streaming server).
`lifespan.startup` builds and starts a `CentreRuntime` (change reader, escalation ladder,
MQTT ingest) and puts it in the lifespan state; uvicorn copies that state into every
request's scope, where `runtime.of(request)` finds it. `lifespan.shutdown` closes it, after
the server has stopped taking requests. A part that does not start fails the startup
(`lifespan.startup.failed`, with the reason; uvicorn logs it and exits), and what had
started is closed again.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from django.core.asgi import get_asgi_application

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingan_centre.console.settings")


class Runtime(Protocol):
    def start(self) -> object: ...
    def close(self) -> None: ...


class CentreApp:
    """Django for HTTP; the runtime's start and close for the lifespan."""

    def __init__(self, django_app: App, make_runtime: Callable[[], Runtime]) -> None:
        self.django_app = django_app
        self.make_runtime = make_runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        from pingan_centre.console.logs import log
        from pingan_centre.console.runtime import STATE_KEY

        runtime: Runtime | None = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if "state" not in scope:
                        raise RuntimeError("this ASGI server keeps no lifespan state; serve "
                                           "the console with `pingan-centre serve` (uvicorn)")
                    runtime = self.make_runtime()
                    # Threads and database reads: off the event loop.
                    await asyncio.to_thread(runtime.start)
                except Exception as exc:
                    reason = f"pingan-centre could not start: {exc}"
                    log("error", "centre.startup_failed", reason=str(exc),
                        action="fix the cause above; nothing of the centre is left running")
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
                scope["state"][STATE_KEY] = runtime
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if runtime is not None:
                        await asyncio.to_thread(runtime.close)
                except Exception as exc:
                    await send({"type": "lifespan.shutdown.failed",
                                "message": f"pingan-centre did not stop cleanly: {exc!r}"})
                    return
                await send({"type": "lifespan.shutdown.complete"})
                return


def make_application(*, ingest: bool = True) -> CentreApp:
    """The console's ASGI app; its runtime runs the MQTT ingest unless `ingest` is False."""
    django_app = get_asgi_application()  # django.setup(): settings and apps first

    from django.conf import settings

    from pingan_centre.console.runtime import CentreRuntime

    def make_runtime() -> CentreRuntime:
        return CentreRuntime(settings.CENTRE, ingest=ingest)

    return CentreApp(django_app, make_runtime)


application = make_application()
