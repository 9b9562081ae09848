"""Logging never makes the threads that store and send alarms wait for the stream."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from conftest import wait_until
from journald_helpers import journald, stream

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


LEVELS = [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)]


def log_every_level(stream: TextIO) -> None:
    stop = logs.setup("debug", stream)
    logger = logging.getLogger("edge.test")
    for level, _ in LEVELS:
        log(logger, level, f"test.{level}", action="none")
    logger.log(25, "test.between")  # a level of its own: the more urgent neighbour
    stop()


def test_on_journalds_stream_each_line_carries_its_priority_and_stays_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_handlers: None) -> None:
    with (tmp_path / "stream").open("w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        log_every_level(stream)
        stream.seek(0)
        written = stream.read().splitlines()
    expected = [(f"test.{level}", prio) for level, prio in LEVELS] + [("test.between", 4)]
    got = []
    for line in written:
        m = re.fullmatch(r"<([0-7])>(\{.*\})", line)
        assert m, line
        got.append((json.loads(m.group(2))["event"], int(m.group(1))))
    assert got == expected


@pytest.mark.parametrize("journal_stream", [None, "another"])
def test_elsewhere_the_lines_are_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            root_handlers: None,
                                            journal_stream: str | None) -> None:
    """On a terminal, in a pipe, or on a stderr a child got from a journald-connected parent
    (the variable is inherited; the stream is not the same)."""
    other = tmp_path / "other"
    other.write_text("")
    if journal_stream is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        st = other.stat()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    with (tmp_path / "stream").open("w+") as stream:
        log_every_level(stream)
        stream.seek(0)
        written = [json.loads(line)["event"] for line in stream.read().splitlines()]
    assert written == [f"test.{level}" for level, _ in LEVELS] + ["test.between"]


@pytest.fixture
def journald_ns() -> Iterator[str]:
    with journald("pingantest") as ns:
        yield ns


def test_journalctl_p_warning_shows_the_stations_warnings(journald_ns: str) -> None:
    """As systemd runs the station: stderr is a stream to journald and $JOURNAL_STREAM
    names it."""
    ns = journald_ns
    with stream(ns, "pingan-edge") as (sock, journal_stream):
        code = ("import logging\nfrom edge import logs\nstop = logs.setup('debug')\n"
                "lg = logging.getLogger('edge.test')\n"
                "for level in ('debug', 'info', 'warning', 'error', 'critical'):\n"
                "    logs.log(lg, level, 'test.' + level, action='look')\nstop()\n")
        subprocess.run([sys.executable, "-c", code], stderr=sock.fileno(), check=True,
                       env=dict(os.environ, JOURNAL_STREAM=journal_stream),
                       timeout=60)

    def entries(*args: str) -> list[dict[str, str]]:
        out = subprocess.run(["journalctl", f"--namespace={ns}", "-o", "json", "--no-pager",
                              "-t", "pingan-edge", *args], capture_output=True, text=True,
                             check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    wait_until(lambda: len(entries()) == 5)
    warnings = entries("-p", "warning")
    assert [(json.loads(e["MESSAGE"])["event"], e["PRIORITY"]) for e in warnings] == [
        ("test.warning", "4"), ("test.error", "3"), ("test.critical", "2")]
    assert all(json.loads(e["MESSAGE"])["action"] == "look" for e in warnings)
    assert [e["PRIORITY"] for e in entries()] == ["7", "6", "4", "3", "2"]
