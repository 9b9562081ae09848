"""The unit's warnings on the card: `python -m edge.unit.warnlog` (pingan-warnlog.service).

The image keeps the journal in RAM (journald `Storage=volatile`): a persistent journal
rewrote its files' pages all day and was most of what an idle unit wrote to the card. So
the lines that explain a failure, warnings and worse from every unit (the station's
`audio.failed`, `health.problem`, the kernel's I/O errors), are copied here, one line each,
to a small file on the data partition, and synced at once: a power cut a second later
still leaves them on the card. Everything else lives until the next reboot in
`journalctl`.

It follows `journalctl --follow --priority=warning` from the cursor of the last line it
kept, held in RAM (/run), so a restart of this service within a boot neither repeats nor
loses a line; after a reboot the RAM journal starts empty and so does /run. A line is
written before its cursor is recorded: a kill between the two repeats it, never loses
it (a power cut loses at most the last second of a burst). The file is bounded: past
`--max-bytes` it is renamed to `.1` (the one before is dropped). A storm of warnings is
synced at most once a second, and past `--max-lines-per-min` lines are counted, not
written, and the count written once the minute is over.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

SYNC_EVERY_S = 1.0


class Keeper:
    """Appends lines to `path` and syncs them; bounded in size and in rate."""

    def __init__(self, path: Path, max_bytes: int, max_lines_per_min: int,
                 window_s: float = 60.0) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_lines_per_min = max_lines_per_min
        self.window_s = window_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[bytes] = path.open("ab")
        self._dirty = False
        self._synced = 0.0
        self._minute = time.monotonic()
        self._count = 0
        self._dropped = 0

    def _roll(self) -> None:
        """A new window: say how many the last one did not keep."""
        now = time.monotonic()
        if self._count == 0:  # a window starts with its first line
            self._minute = now
        elif now - self._minute >= self.window_s:
            if self._dropped:
                self._write(f"{_now()} <4> - pingan-warnlog: {self._dropped} warning lines "
                            f"not kept (over {self.max_lines_per_min} in {self.window_s:g} s)"
                            "; journalctl -p warning has them until the next reboot")
            self._minute, self._count, self._dropped = now, 0, 0

    def add(self, line: str) -> None:
        self._roll()
        if self._count >= self.max_lines_per_min:
            self._dropped += 1
            return
        self._count += 1
        self._write(line)
        self.tick()

    def _write(self, line: str) -> None:
        data = (line.replace("\n", " ") + "\n").encode()
        if self._f.tell() + len(data) > self.max_bytes and self._f.tell() > 0:
            self._rotate()
        self._f.write(data)
        self._f.flush()
        self._dirty = True

    def _rotate(self) -> None:
        self._sync()
        self._f.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._f = self.path.open("ab")
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def tick(self) -> None:
        """Sync what is written, unless the last sync was under a second ago."""
        self._roll()
        if self._dirty and time.monotonic() - self._synced >= SYNC_EVERY_S:
            self._sync()

    def _sync(self) -> None:
        os.fdatasync(self._f.fileno())
        self._dirty = False
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._dirty:
            self._sync()
        self._f.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_entry(entry: dict[str, Any]) -> str:
    """`TIME PRIORITY UNIT IDENTIFIER[PID]: MESSAGE`, the message as journald has it (the
    station's JSON)."""
    usec = int(entry.get("__REALTIME_TIMESTAMP", "0") or 0)
    when = dt.datetime.fromtimestamp(usec / 1e6, dt.UTC).isoformat(timespec="milliseconds")
    ident = entry.get("SYSLOG_IDENTIFIER") or entry.get("_COMM") or "?"
    pid = entry.get("_PID") or entry.get("SYSLOG_PID")
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald gives bytes that are not UTF-8 as a list
        message = bytes(message).decode("utf-8", "replace")
    unit = entry.get("_SYSTEMD_UNIT", "-")
    return (f"{when.replace('+00:00', 'Z')} <{entry.get('PRIORITY', '?')}> {unit} "
            f"{ident}{f'[{pid}]' if pid else ''}: {message}")


def follow(args: argparse.Namespace) -> int:
    keeper = Keeper(args.out, args.max_bytes, args.max_lines_per_min, args.window_s)
    cursor = args.cursor.read_text().strip() if args.cursor.exists() else ""
    cmd = ["journalctl", "--follow", "--lines=all", "--priority=warning", "--output=json",
           "--no-pager",
           *([f"--after-cursor={cursor}"] if cursor else ["--boot"]),
           *([f"--namespace={args.namespace}"] if args.namespace else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    stopping = False

    def stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    buf = b""
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], SYNC_EVERY_S)
            keeper.tick()
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                keeper.add(format_entry(entry))
                if "__CURSOR" in entry:  # where to go on from after a restart (RAM: cheap)
                    tmp = args.cursor.with_name(args.cursor.name + ".tmp")
                    tmp.write_text(entry["__CURSOR"])
                    os.replace(tmp, args.cursor)
    finally:
        keeper.close()
        proc.wait()
    if stopping:
        return 0
    print(json.dumps({"event": "warnlog.journalctl_exited", "code": proc.returncode,
                      "action": "systemd restarts this service; if it keeps failing, check "
                      "journalctl -u pingan-warnlog"}), file=sys.stderr, flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.unit.warnlog", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/var/log/pingan/warnings.log"))
    p.add_argument("--cursor", type=Path, default=Path("/run/pingan-warnlog/cursor"),
                   help="journalctl's position, in RAM (the journal is)")
    p.add_argument("--max-bytes", type=int, default=1 << 20)
    p.add_argument("--max-lines-per-min", type=int, default=120,
                   help="lines kept per window; the rest counted")
    p.add_argument("--window-s", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--namespace", default="", help="a journald namespace (tests)")
    args = p.parse_args(argv)
    args.cursor.parent.mkdir(parents=True, exist_ok=True)
    return follow(args)


if __name__ == "__main__":
    sys.exit(main())
