"""edge.unit.warnlog against a real systemd-journald (a namespace of the test's own): only
warnings and worse reach the file, the station's JSON intact; kill -9 and a restart
neither lose nor repeat a line; the file stays bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from journald_helpers import journald, stream

LEVELS = ("debug", "info", "warning", "error", "critical")
ROOT = Path(__file__).resolve().parent.parent
IMAGE_JOURNALD = ROOT / "firmware/rootfs/etc/systemd/journald.conf.d/pingan.conf"


@pytest.fixture
def ns() -> Iterator[str]:
    with journald("pinganwarn") as name:
        yield name


def station_lines(ns: str, tag: str, count: int = 1) -> None:
    """`count` lines at every level, as the station logs them under systemd."""
    code = ("import logging, sys\nfrom edge import logs\nstop = logs.setup('debug')\n"
            "lg = logging.getLogger('edge.test')\n"
            f"for n in range({count}):\n"
            f"    for level in {LEVELS!r}:\n"
            f"        logs.log(lg, level, '{tag}.' + level, n=n, action='look')\nstop()\n")
    with stream(ns, "pingan-edge") as (sock, journal_stream):
        subprocess.run([sys.executable, "-c", code], stderr=sock.fileno(), check=True,
                       env=dict(os.environ, JOURNAL_STREAM=journal_stream), timeout=60)


def keeper(ns: str, tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge.unit.warnlog", "--namespace", ns,
                             "--out", str(tmp_path / "log" / "warnings.log"),
                             "--cursor", str(tmp_path / "run" / "cursor"), *extra],
                            stderr=subprocess.PIPE, text=True)


def kept(tmp_path: Path) -> list[tuple[str, str]]:
    """(priority, event) of each line in the file."""
    path = tmp_path / "log" / "warnings.log"
    out = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        prio = line.split()[1]
        message = line.split(": ", 1)[1]
        out.append((prio, json.loads(message)["event"]))
    return out


def test_only_warnings_and_worse_are_kept_with_their_json(ns: str, tmp_path: Path) -> None:
    proc = keeper(ns, tmp_path)
    try:
        station_lines(ns, "first")  # some before the keeper reads, some after: both kept
        wait_until(lambda: len(kept(tmp_path)) == 3, 30, "three lines kept")
        station_lines(ns, "second")
        wait_until(lambda: len(kept(tmp_path)) == 6, 30, "six lines kept")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
    assert kept(tmp_path) == [("<4>", "first.warning"), ("<3>", "first.error"),
                              ("<2>", "first.critical"), ("<4>", "second.warning"),
                              ("<3>", "second.error"), ("<2>", "second.critical")]
    line = (tmp_path / "log" / "warnings.log").read_text().splitlines()[0]
    assert " pingan-edge[" in line and '"action": "look"' in line


def test_kill_9_and_a_restart_neither_lose_nor_repeat(ns: str, tmp_path: Path) -> None:
    proc = keeper(ns, tmp_path)
    station_lines(ns, "before")
    wait_until(lambda: len(kept(tmp_path)) == 3, 30, "three lines kept")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    station_lines(ns, "while-down")  # logged while nothing keeps them
    proc = keeper(ns, tmp_path)
    try:
        station_lines(ns, "after")
        wait_until(lambda: len(kept(tmp_path)) >= 9, 30, "nine lines kept")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    events = [e for _, e in kept(tmp_path)]
    assert events == [f"{tag}.{level}" for tag in ("before", "while-down", "after")
                      for level in LEVELS[2:]]


def test_the_file_stays_bounded_and_a_storm_is_counted(ns: str, tmp_path: Path) -> None:
    proc = keeper(ns, tmp_path, "--max-bytes", "2000", "--max-lines-per-min", "20",
                  "--window-s", "3")
    current = tmp_path / "log" / "warnings.log"
    try:
        station_lines(ns, "storm", count=30)  # 90 warning+ lines, at once
        old = tmp_path / "log" / "warnings.log.1"
        # Once the window is over, the count of what was not kept.
        wait_until(lambda: current.exists() and "not kept" in current.read_text(), 30,
                   "the count of lines not kept")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert current.stat().st_size <= 2000 and old.stat().st_size <= 2000
    lines = old.read_text().splitlines() + current.read_text().splitlines()
    assert lines[-1].endswith("pingan-warnlog: 70 warning lines not kept (over 20 in 3 s); "
                              "journalctl -p warning has them until the next reboot")
    lines = lines[:-1]
    got = [(json.loads(x.split(": ", 1)[1])["event"], json.loads(x.split(": ", 1)[1])["n"])
           for x in lines]
    # The first 20 of the minute were kept (the oldest may have rotated away), none after.
    first20 = [(f"storm.{level}", n) for n in range(30) for level in LEVELS[2:]][:20]
    assert got and got == first20[-len(got):]


def test_the_images_journald_keeps_the_journal_in_ram(tmp_path: Path) -> None:
    """journald with the image's own settings: nothing under /var/log/journal (the card),
    the journal in /run; journalctl still shows the warnings of this boot."""
    with journald("pinganvol", IMAGE_JOURNALD.read_text()) as name:
        station_lines(name, "ram")
        machine = Path("/etc/machine-id").read_text().strip()
        ram = Path("/run/log/journal") / f"{machine}.{name}"
        card = Path("/var/log/journal") / f"{machine}.{name}"
        wait_until(lambda: any(ram.glob("*.journal")), 30, "the RAM journal")
        out = subprocess.run(["journalctl", f"--namespace={name}", "-p", "warning", "-o",
                              "cat", "--no-pager"], capture_output=True, text=True).stdout
        assert [json.loads(x)["event"] for x in out.splitlines()] == [
            "ram.warning", "ram.error", "ram.critical"]
        assert not card.exists()
