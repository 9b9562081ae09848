"""Structured logs: one JSON object per line on stderr (journald keeps them).

Call `log(logger, "info", "uplink.connected", host=..., action="...")`: the event name
is stable for grep and alerting; `action` tells a technician what to do next.

`setup()` puts a bounded queue between the threads that log and the stream: a call only
queues the record, and one `log-writer` thread formats and writes it. The threads that
store and send alarms log, and must never wait for stderr (journald stalls under load; a
full pipe blocks its writer). A full queue drops records and says how many, once there
is room again.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

QUEUE_MAX = 10_000


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Handoff(logging.handlers.QueueHandler):
    """Queues a record for the log writer, never waits: a full queue drops it, counted."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self._lock = threading.Lock()
        self._dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatting is the writer's work; only the message is fixed now.
        record.msg, record.args = record.getMessage(), None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def take_dropped(self) -> int:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        return dropped


class _Writer:
    """The `log-writer` thread: formats and writes what the handoff queued."""

    def __init__(self, records: queue.Queue[Any], handler: logging.Handler,
                 handoff: _Handoff) -> None:
        self._records = records
        self._handler = handler
        self._handoff = handoff
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while (record := self._records.get()) is not None:
            if dropped := self._handoff.take_dropped():
                self._handler.handle(logging.makeLogRecord({
                    "name": "edge.logs", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": "logs.dropped", "created": record.created, "msecs": record.msecs,
                    "fields": {"count": dropped, "action": "the log stream (journald) was "
                               "too slow; check the unit's load and the SD card"}}))
            self._handler.handle(record)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued and end the thread; a stream stuck past `timeout` is left."""
        # The queue may be full: wait for room rather than lose the stop.
        with contextlib.suppress(queue.Full):
            self._records.put(None, timeout=timeout)
        self._thread.join(timeout)


def setup(level: str = "info", stream: TextIO | None = None) -> Callable[[], None]:
    """Log JSON lines to `stream` (stderr) through the log writer; returns what stops it
    (after writing everything queued), also called at exit."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    records: queue.Queue[Any] = queue.Queue(QUEUE_MAX)
    handoff = _Handoff(records)
    writer = _Writer(records, handler, handoff)
    root = logging.getLogger()
    root.handlers[:] = [handoff]
    root.setLevel(level.upper())
    # paho and gpiozero are chatty at debug; their warnings still come through.
    logging.getLogger("paho").setLevel(logging.WARNING)
    writer.start()
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        if root.handlers == [handoff]:
            root.handlers[:] = [handler]  # whatever logs after this is written directly
        writer.stop()
        with contextlib.suppress(Exception):
            handler.flush()

    atexit.register(stop)
    return stop


def log(logger: logging.Logger, level: str, event: str, **fields: Any) -> None:
    logger.log(logging.getLevelNamesMapping()[level.upper()], event, extra={"fields": fields})
