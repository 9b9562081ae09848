"""The ASGI application: Django's, wrapped to own the centre's running parts.

Served by uvicorn with `lifespan="on"` (server-sent events need a streaming server), and
WebSocket through wsproto: live voice's socket (`/voice/ws`, console/voice.py) is handled
here, beside Django, which serves HTTP only.
`lifespan.startup` builds and starts a `CentreRuntime` (change reader, escalation ladder,
MQTT ingest) and puts it in the lifespan state; uvicorn copies that state into every
request's scope, where `runtime.of(request)` finds it. `lifespan.shutdown` closes it, after
the server has stopped taking requests. A part that does not start fails the startup
(`lifespan.startup.failed`, with the reason; uvicorn logs it and exits), and what had
started is closed again.

uvicorn waits for open responses before it sends `lifespan.shutdown`, and a duty screen's
event stream never ends by itself: `CentreServer` ends the streams first (the browsers
reconnect to whichever centre comes back), so a stop takes well under a second instead
of uvicorn's grace period and a cancelled task's traceback.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import uvicorn
from django.core.asgi import get_asgi_application

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pingan_centre.console.settings")


class Runtime(Protocol):
    def start(self) -> object: ...
    def end_streams(self) -> None: ...
    def close(self) -> None: ...


class CentreApp:
    """Django for HTTP; the runtime's start and close for the lifespan."""

    def __init__(self, django_app: App, make_runtime: Callable[[], Runtime]) -> None:
        self.django_app = django_app
        self.make_runtime = make_runtime
        # The runtime this app's lifespan started, for end_streams(); requests reach it
        # through the lifespan state in their scope (runtime.of), never through here.
        self._running: Runtime | None = None

    def end_streams(self) -> None:
        """The server is stopping: end the open event streams now."""
        if self._running is not None:
            self._running.end_streams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.django_app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Live voice (console/voice.py) is the one WebSocket; any other is refused."""
        from pingan_centre.console import voice
        from pingan_centre.console.runtime import STATE_KEY, CentreRuntime

        runtime = scope.get("state", {}).get(STATE_KEY)
        if scope.get("path") != "/voice/ws" or not isinstance(runtime, CentreRuntime):
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 4404})
            return
        await voice.serve(scope, receive, send, runtime.cfg.township,
                          runtime.publish_volatile if runtime.ingest is not None else None)

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
                scope["state"][STATE_KEY] = self._running = runtime
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._running = None
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


class CentreServer(uvicorn.Server):
    """uvicorn's server, which ends the console's event streams when it starts to stop."""

    def __init__(self, config: uvicorn.Config, app: CentreApp) -> None:
        super().__init__(config)
        self.centre_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.centre_app.end_streams()
        await super().shutdown(sockets)


def server(host: str, port: int, *, ingest: bool = True) -> CentreServer:
    """What `pingan-centre serve` runs (a test runs the same in its own process)."""
    app = make_application(ingest=ingest)
    return CentreServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                       lifespan="on", timeout_graceful_shutdown=1,
                                       ws="wsproto"), app)


application = make_application()
