"""The local control socket: what `pingan-edge status` (and, to a simulated station,
`pingan-edge press`) talk to.

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
from typing import Any, TypeVar

import msgspec

from edge.logs import log

logger = logging.getLogger("edge.control")


class StatusRequest(msgspec.Struct, tag_field="op", tag="status", forbid_unknown_fields=True):
    pass


class _Op(msgspec.Struct):
    op: str


class ControlError(Exception):
    """A request the station refuses; the message goes back to the caller."""


R = TypeVar("R", bound=msgspec.Struct)
Handler = Callable[[Any], dict[str, Any]]


class ControlServer:
    """The socket and its handler table: each request is a tagged struct (`op`), and the
    part that serves it registers it (the station `status`, the simulator `press`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: _Server | None = None
        outer = self

        class _Stream(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    reply = outer._answer(line)
                    self.wfile.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")

        self._table: dict[str, tuple[type[msgspec.Struct], Handler]] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # left by a crash; a live daemon holds the lock
            self._server = _Server(str(path), _Stream)
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

    def register(self, kind: type[R], handler: Callable[[R], dict[str, Any]]) -> None:
        op = str(kind.__struct_config__.tag)
        if op in self._table:
            raise ValueError(f"control request {op!r} already has a handler")
        self._table[op] = (kind, handler)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            op = msgspec.json.decode(line, type=_Op).op
            if op not in self._table:
                raise ControlError(f"unknown request {op!r}: this station answers "
                                   f"{', '.join(sorted(self._table))}")
            kind, handler = self._table[op]
            return {"ok": True, **handler(msgspec.json.decode(line, type=kind))}
        except (msgspec.DecodeError, msgspec.ValidationError, ControlError) as exc:
            log(logger, "warning", "control.rejected", error=str(exc))
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a handler: the caller still gets an answer
            logger.error("control.failed", exc_info=True, extra={"fields": {
                "error": repr(exc),
                "action": "a bug: report this log line with the request; the station runs on"}})
            return {"ok": False, "error": f"the station failed to answer: {exc!r}"}

    def _serve(self) -> None:
        if self._server is not None:
            self._server.serve_forever(poll_interval=0.05)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop answering; a request in hand (a burst of simulated presses) is not waited
        for: it runs on its own thread and its part ends it. Safe twice."""
        server, self._server = self._server, None
        if server is None:
            return
        if self._thread.is_alive():
            server.shutdown()
        server.server_close()
        self.path.unlink(missing_ok=True)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    # Each connection on a thread of its own, so that a long request never holds the
    # socket (or a stop) up; at exit none is waited for.
    daemon_threads = True
    block_on_close = False


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
