"""Structured logs: one JSON object per line on stderr (journald keeps them).

When stderr is journald's stream (systemd says so in `$JOURNAL_STREAM`: the device and
inode of the stream it connected), each line starts with its syslog priority, `<4>` for a
warning: journald takes the prefix off (its default `SyslogLevelPrefix=yes`), files the
JSON as the message at that priority, and a technician's `journalctl -p warning` shows the
station's warnings. On a terminal or in a pipe the lines are plain JSON.

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
import io
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

QUEUE_MAX = 10_000

# Python's levels as syslog priorities (RFC 5424): what journald's PRIORITY= holds.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}


def priority(levelno: int) -> int:
    """The syslog priority of a Python level; one between two takes the more urgent."""
    return next((p for lv, p in sorted(PRIORITY.items()) if lv >= levelno), 2)


def journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the journald stream systemd connected ($JOURNAL_STREAM =
    "DEVICE:INODE" of it; a child given another stderr inherits the variable, hence the
    comparison)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


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


class JournalFormatter(JsonFormatter):
    """The JSON line behind its priority, `<N>`, for journald's stream."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{super().format(record)}"


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
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal_stream(out) else JsonFormatter())
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
