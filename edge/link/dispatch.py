"""Township commands off the network thread: one bounded queue, one worker, one table.

paho's network thread also carries the alarms' PUBACKs, so its `on_message` only
validates (`commands.parse`, cheap and bounded by `uplink.max_command_bytes`), drops a
command id already answered, and queues the command. The `cmd-worker` thread runs it
through the handler table, into which each part (the station, the loudspeaker, the
camera) registers the commands it serves. A full queue is answered `busy` at once:
nothing waits for room.

Every command id is acted on and answered once, rejected ones too: the ids seen are
kept (the newest REMEMBER_COMMANDS) whatever the outcome, so a QoS 1 redelivery or a
township retry with the same id gets no second answer. They outlive a restart: the worker
seeds them from the answers (`cmd.result` events) stored in the outbox. An answer is an
event like any other, stored and sent in order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import msgspec

from edge.config import BACKGROUND_NICE
from edge.contract import commands
from edge.contract.commands import rejected, tag
from edge.contract.events import CmdResult, CmdResultPayload, ErrorInfo, text
from edge.logs import log
from edge.store.outbox import Outbox
from edge.store.recorder import Recorder

logger = logging.getLogger("edge.commands")

Handler = Callable[[Any], dict[str, Any]]
REMEMBER_COMMANDS = 4096
_STOP = object()
_result_head = msgspec.json.Decoder(dict[str, Any])
_STOPPING = ErrorInfo(code="stopping", message=text("站点正在停止，命令未执行，请重发",
                                                    "the station is stopping: not run; resend"))


class Handlers:
    """The one handler table: command class → the part's function that serves it."""

    def __init__(self) -> None:
        self._table: dict[type, Handler] = {}

    def register(self, kinds: type | tuple[type, ...], handler: Handler, *,
                 replace: bool = False) -> None:
        for kind in kinds if isinstance(kinds, tuple) else (kinds,):
            if kind in self._table and not replace:
                raise ValueError(f"{kind.__name__} already has a handler")
            self._table[kind] = handler

    def __call__(self, cmd: commands.Command) -> dict[str, Any]:
        handler = self._table.get(type(cmd))
        if handler is None:
            raise rejected(cmd, "invalid_command", text(
                f"本站不支持命令 {tag(cmd)}", f"this station does not serve {tag(cmd)}"))
        return handler(cmd)


class CommandWorker:
    def __init__(self, handlers: Handlers, recorder: Recorder, outbox: Outbox, *,
                 max_bytes: int, queue_size: int, remember: int = REMEMBER_COMMANDS,
                 close_s: float = 0.3) -> None:
        self.handlers = handlers
        self._recorder = recorder
        self._max_bytes = max_bytes
        self._close_s = close_s
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._seen = commands.SeenCommands(remember)
        self._seen_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cmd-worker", daemon=True)
        self.remember(_answered(outbox.recent("cmd.result", remember)))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Let the command in hand finish (up to `close_s`); answer the queued ones, and
        any that still arrive, `stopping`, so the township knows they did not run."""
        self._stopping.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, commands.CommandBase):
                self._answer(item.id, tag(item), False, _STOPPING, None)  # type: ignore[arg-type]
        with contextlib.suppress(queue.Full):  # full again already: the flag stops it
            self._queue.put_nowait(_STOP)
        if self._thread.is_alive():
            self._thread.join(self._close_s)

    def remember(self, cmd_ids: list[str]) -> None:
        """Ids answered before (oldest first), e.g. by the previous run of the station."""
        with self._seen_lock:
            for cmd_id in cmd_ids:
                self._seen.first_time(cmd_id)

    def _first_time(self, cmd_id: str | None) -> bool:
        if cmd_id is None:
            return True  # nothing to recognise it by again: each copy is answered
        with self._seen_lock:
            return self._seen.first_time(cmd_id)

    def receive(self, topic: str, payload: bytes) -> None:
        """On paho's network thread: validate, de-duplicate, queue; never waits."""
        try:
            cmd = commands.parse(payload, self._max_bytes)
        except commands.CommandRejected as exc:
            if self._first_time(exc.cmd_id):
                self._reject(topic, exc)
            else:
                log(logger, "info", "command.duplicate", cmd_id=exc.cmd_id, topic=topic)
            return
        if not self._first_time(cmd.id):
            log(logger, "info", "command.duplicate", cmd_id=cmd.id, topic=topic)
            return
        if self._stopping.is_set():
            self._answer(cmd.id, tag(cmd), False, _STOPPING, None)
            return
        try:
            self._queue.put_nowait(cmd)
        except queue.Full:
            self._reject(topic, rejected(cmd, "busy", text(
                "站点命令过多，本命令未执行，请稍后用新的 id 重发",
                f"the station is busy ({self._queue.maxsize} commands waiting): not run; "
                f"resend later with a new id")))

    def _reject(self, topic: str, exc: commands.CommandRejected) -> None:
        log(logger, "warning", "command.rejected", topic=topic, cmd_id=exc.cmd_id,
            code=exc.error.code, error=exc.error.message.en,
            action="the township sent a command the station could not take; "
                   "it was answered on cmd/result")
        self._answer(exc.cmd_id, exc.cmd, False, exc.error, None)

    def _run(self) -> None:
        # Commands are background work (speech, clips): on two cores the threads that
        # store and send alarms come first. Linux gives each thread its own nice value.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        while True:
            item = self._queue.get()
            if item is _STOP or self._stopping.is_set():
                return
            assert isinstance(item, commands.CommandBase)
            self._execute(item)  # type: ignore[arg-type]

    def _execute(self, cmd: commands.Command) -> None:
        try:
            detail = self.handlers(cmd)
        except commands.CommandRejected as exc:
            self._reject("", exc)
            return
        except Exception as exc:
            logger.exception("command.failed", extra={"fields": {"cmd_id": cmd.id}})
            self._answer(cmd.id, tag(cmd), False, ErrorInfo(
                code="internal_error", message=text("站点执行命令出错", f"station error: {exc}")),
                None)
            return
        log(logger, "info", "command.done", cmd=tag(cmd), cmd_id=cmd.id, by=cmd.by,
            detail=detail)
        self._answer(cmd.id, tag(cmd), True, None, detail)

    def _answer(self, cmd_id: str | None, cmd: str | None, ok: bool, error: ErrorInfo | None,
                detail: dict[str, Any] | None) -> None:
        self._recorder.record(CmdResult(
            payload=CmdResultPayload(cmd_id=cmd_id, cmd=cmd, ok=ok, error=error,
                                     detail=detail or {}), **self._recorder.identity()))


def _answered(bodies: list[bytes]) -> list[str]:
    """The command ids of stored `cmd.result` bodies (newest first), oldest first."""
    ids = []
    for body in reversed(bodies):
        cmd_id = _result_head.decode(body).get("payload", {}).get("cmd_id")
        if isinstance(cmd_id, str):
            ids.append(cmd_id)
    return ids
