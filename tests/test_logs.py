"""Logging never makes the threads that store and send alarms wait for the stream."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from edge import logs
from edge.logs import log


class StuckStream(io.StringIO):
    """A stderr whose reader (journald) has stopped: writes block until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, s: str) -> int:
        self.entered.set()
        self.release.wait()
        return super().write(s)


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = saved, level


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_stuck_stream_neither_blocks_callers_nor_grows_without_bound(
        monkeypatch: pytest.MonkeyPatch, root_handlers: None) -> None:
    monkeypatch.setattr(logs, "QUEUE_MAX", 50)
    stream = StuckStream()
    stop = logs.setup("info", stream)
    logger = logging.getLogger("edge.test")

    done = threading.Event()

    def caller() -> None:  # as the outbox writer would, while the stream is stuck
        for n in range(500):
            log(logger, "info", "test.line", n=n)
        done.set()

    threading.Thread(target=caller, name="test-caller", daemon=True).start()
    # With a direct StreamHandler the caller would hang on its first line.
    assert done.wait(10), "a log call waited for the stuck stream"
    assert stream.entered.wait(5)
    stream.release.set()
    stop()

    written = lines(stream)
    ns = [d["n"] for d in written if d["event"] == "test.line"]
    assert ns == sorted(ns) and ns[0] == 0  # in order, the first kept
    # 1 line in the stream's hands + at most QUEUE_MAX queued; the rest counted, not kept.
    assert len(ns) <= 51
    dropped = [d for d in written if d["event"] == "logs.dropped"]
    # Said when the writer next gets through (more than once if drops went on meanwhile).
    assert dropped and sum(int(str(d["count"])) for d in dropped) == 500 - len(ns)
    assert all(d["level"] == "warning" and "action" in d for d in dropped)
    assert written[-1]["event"] == "test.line" and len(ns) >= 50  # stop() wrote the queue


def test_lines_keep_their_fields_exception_and_time_of_the_call(root_handlers: None) -> None:
    stream = io.StringIO()
    stop = logs.setup("info", stream)
    logger = logging.getLogger("edge.test")
    log(logger, "debug", "test.hidden")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("test.failed", extra={"fields": {"action": "look"}})
    logger.warning("test.%s", "formatted")
    stop()
    written = lines(stream)
    assert [d["event"] for d in written] == ["test.failed", "test.formatted"]
    assert written[0]["action"] == "look" and "ValueError: boom" in str(written[0]["exception"])
    assert written[1]["level"] == "warning" and str(written[1]["ts"]).endswith("Z")
