"""The local control socket: what `pingan-edge press` and `pingan-edge status` talk to.

One JSON object per line in, one per line out, over a Unix socket only the owner (and
group) can open. Requests are validated here like any other input.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from edge.logs import log

logger = logging.getLogger("edge.control")


class Press(msgspec.Struct, tag_field="op", tag="press", forbid_unknown_fields=True):
    button: Literal["panic", "broadcast"]
    hold_s: Annotated[float, msgspec.Meta(ge=0, le=30)] | None = None
    count: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 1
    interval_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class StatusRequest(msgspec.Struct, tag_field="op", tag="status", forbid_unknown_fields=True):
    pass


Request = Press | StatusRequest


class ControlError(Exception):
    """A request the station refuses; the message goes back to the caller."""


Handler = Callable[[Request], dict[str, Any]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._server: socketserver.UnixStreamServer | None = None
        outer = self

        class _Stream(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    reply = outer._answer(line)
                    self.wfile.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")

        self._handler = handler
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # left by a crash; a live daemon holds the lock
            self._server = socketserver.UnixStreamServer(str(path), _Stream)
            os.chmod(path, 0o660)
        except OSError as exc:
            # A read-only data directory must not take the alarm path down with it.
            log(logger, "error", "control.unavailable", path=str(path), error=str(exc),
                action="`pingan-edge press/status` cannot reach this station; make the "
                       "socket's directory writable (or set control.socket) and restart")
            if self._server:
                self._server.server_close()
            self._server = None
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = msgspec.json.decode(line, type=Request)
            return {"ok": True, **self._handler(request)}
        except (msgspec.DecodeError, msgspec.ValidationError, ControlError) as exc:
            log(logger, "warning", "control.rejected", error=str(exc))
            return {"ok": False, "error": str(exc)}

    def _serve(self) -> None:
        if self._server is not None:
            self._server.serve_forever(poll_interval=0.2)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._server is None:
            return
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def request(path: Path, payload: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Send one request to a running station and return its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply
