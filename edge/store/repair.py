"""A damaged outbox: find it on open, move it aside, salvage every row that can be read.

Nothing here deletes the damaged file. It is renamed into `<data_dir>/quarantine/` with
a UTC timestamp (with its `-wal`/`-shm`), a report of what was found is written beside
it as JSON, and rows are read from a scratch copy, so the quarantined file stays exactly
as it was found for whoever analyses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from edge.contract.events import decode_event
from edge.store import durable, private

logger = logging.getLogger("edge.outbox")

QUARANTINE = "quarantine"
_MAGIC = b"SQLite format 3\x00"
# The outbox's page size: an isolated event rewrites a few pages, and small pages are
# fewer bytes written to the SD card (set when the database is created).
PAGE_SIZE = 1024
_COLUMNS = "seq, id, type, priority, body, size, created"


class Damage(msgspec.Struct, forbid_unknown_fields=True):
    """What was wrong with the outbox at a start, and what became of its rows."""

    kind: Literal["corrupt", "emptied", "wal_lost", "rolled_back"]
    found_at: str
    error: str
    # The damaged file as kept, relative to the data directory; None if nothing was kept.
    quarantined: str | None = None
    salvaged: int = 0
    salvaged_alarms: int = 0
    # Rows known to have been there and not recovered; None when nothing tells how many.
    lost: int | None = None
    # The first seq given to new events after this; any lost seqs lie below it.
    resumed_at: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    id: str
    type: str
    priority: int
    body: bytes
    size: int
    created: float
    delivered_at: float | None


@dataclass(slots=True)
class Salvage:
    rows: list[Row]
    # Rows the damaged file held that were not recovered (found but unreadable, or in a
    # damaged stretch); None when nothing tells how many.
    lost: int | None
    meta_next: int | None  # the damaged file's own next seq, if it could still be read


def check(path: Path) -> str | None:
    """None if `path` is missing or a sound database, else what is wrong with it."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            # Another process has it open (the outbox's unix-excl lock): not damage, and
            # nothing to quarantine. The caller's open fails on the same lock.
            raise
        return str(exc)
    finally:
        conn.close()
    if rows != [("ok",)]:
        return "; ".join(str(r[0]) for r in rows[:3])[:500]
    return None


def quarantine(path: Path) -> Path:
    """Rename `path` (and its -wal, -shm) into the quarantine folder; return the new path."""
    folder = path.parent / QUARANTINE
    folder.mkdir(mode=0o700, exist_ok=True)  # copies of the outbox: the station's alone
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = folder / f"{path.stem}-{stamp}{path.suffix}"
    n = 1
    while dest.exists():
        dest = folder / f"{path.stem}-{stamp}-{n}{path.suffix}"
        n += 1
    for suffix in ("-wal", "-shm", ""):  # the main file last: a crash here re-finds it
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(dest) + suffix))
    durable.sync_dir(folder)
    durable.sync_dir(path.parent)
    return dest


def write_report(quarantined_or_base: Path, damage: Damage) -> None:
    durable.write(Path(str(quarantined_or_base) + ".json"),
                  msgspec.json.format(msgspec.json.encode(damage)) + b"\n", mode=private.MODE)


def reports(data_dir: Path) -> list[Damage]:
    """Every damage report still in the quarantine folder, oldest first."""
    folder = data_dir / QUARANTINE
    out = []
    for report in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, msgspec.DecodeError, msgspec.ValidationError):
            out.append(msgspec.json.decode(report.read_bytes(), type=Damage))
    return out


def salvage(quarantined: Path, next_seq: int | None = None) -> Salvage:
    """Read every row that can still be read from a quarantined outbox, through a
    scratch copy (deleted afterwards) whose header is rebuilt if need be. `next_seq`,
    if known (a clean stop's seq mark), counts the rows lost from a damaged tail."""
    scratch = quarantined.with_name(quarantined.name + ".salvage")
    try:
        try:
            shutil.copyfile(quarantined, scratch)
            wal = Path(str(quarantined) + "-wal")
            if wal.exists():
                shutil.copyfile(wal, Path(str(scratch) + "-wal"))
        except OSError as exc:  # e.g. no room for the copy: nothing can be read safely
            logger.warning("outbox.salvage_copy_failed: %s", exc)
            return Salvage([], None, None)
        conn = _open_readable(scratch)
        if conn is None:
            return Salvage([], None, None)
        try:
            return _read_all(conn, next_seq)
        finally:
            conn.close()
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(scratch) + suffix).unlink(missing_ok=True)


def _open_readable(scratch: Path) -> sqlite3.Connection | None:
    """A connection that can read the schema, rebuilding the 100-byte header (page
    count from the file's size) when the file as found cannot be read at all."""
    # The page size a garbled header no longer tells: the outbox's own, then SQLite's
    # default (an outbox created before it chose its own).
    for guess in (None, PAGE_SIZE, 4096):
        if guess:
            _rebuild_header(scratch, wal=Path(str(scratch) + "-wal").exists(), guess=guess)
        try:
            conn = sqlite3.connect(scratch)
        except sqlite3.Error:
            continue
        try:
            conn.execute("SELECT name FROM sqlite_master").fetchall()
            return conn
        except sqlite3.Error:
            conn.close()
    return None


def _rebuild_header(path: Path, *, wal: bool, guess: int) -> None:
    with open(path, "r+b") as f:
        head = f.read(100).ljust(100, b"\x00")
        raw = int.from_bytes(head[16:18], "big")
        page = 65536 if raw == 1 else raw
        if head[:16] != _MAGIC or page < 512 or page & (page - 1):
            page = guess
        size = os.fstat(f.fileno()).st_size
        pages = max(1, -(-size // page))
        f.truncate(pages * page)  # a file cut mid-page: the rest of that page reads as zeros
        version = 2 if wal else 1
        header = (
            _MAGIC
            + (1 if page == 65536 else page).to_bytes(2, "big")
            + bytes([version, version, 0, 64, 32, 32])
            + (1).to_bytes(4, "big")  # change counter
            + pages.to_bytes(4, "big")
            + bytes(8)  # no freelist: its pages are simply not reused
            + (1).to_bytes(4, "big")  # schema cookie
            + (4).to_bytes(4, "big")  # schema format
            + bytes(8)
            + (1).to_bytes(4, "big")  # UTF-8
            + bytes(32)
            + (1).to_bytes(4, "big")  # version-valid-for = change counter: trust `pages`
            + sqlite3.sqlite_version_info[0].to_bytes(1, "big")
            + (sqlite3.sqlite_version_info[1] * 1000 + sqlite3.sqlite_version_info[2]).to_bytes(
                3, "big")
        )
        f.seek(0)
        f.write(header)


def _read_all(conn: sqlite3.Connection, next_seq: int | None) -> Salvage:
    meta_next: int | None = None
    with contextlib.suppress(sqlite3.Error):
        row = conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        meta_next = int(row[0]) if row else None
    rows: dict[int, Row] = {}
    unreadable: set[int] = set()
    scans = [_Table(conn, table, delivered, rows, unreadable)
             for table, delivered in (("events", "delivered_at"), ("rejected", "NULL"))]
    for scan in scans:
        scan.read()
    top = max([*rows, *unreadable], default=0)
    lost: int | None = len(unreadable - set(rows)) + sum(s.skipped for s in scans)
    if scans[0].tail_failed:
        # The counter in `meta` is not kept per event: only a clean stop's mark tells.
        lost = None if next_seq is None or lost is None else lost + max(0, next_seq - 1 - top)
    if not rows and not unreadable and meta_next is None:
        lost = None  # nothing could be read: nothing tells how many rows there were
    return Salvage(sorted(rows.values(), key=lambda r: (r.priority, r.seq)), lost, meta_next)


class _Table:
    """Reads one table in seq order at full speed, and steps over each damaged stretch
    of its b-tree: a failed seek moves on by a doubling step, and after a jump it looks
    back for rows the jump stepped over. Counts what lay in the damaged stretches."""

    def __init__(self, conn: sqlite3.Connection, table: str, delivered: str,
                 rows: dict[int, Row], unreadable: set[int]) -> None:
        self.conn, self.table = conn, table
        self.select = f"SELECT {_COLUMNS}, {delivered} FROM {table}"
        self.rows, self.unreadable = rows, unreadable
        self.skipped = 0  # seqs inside damaged stretches, not recovered
        self.tail_failed = False  # could not read to the table's end

    def read(self) -> None:
        try:
            top = self.conn.execute(f"SELECT MAX(seq) FROM {self.table}").fetchone()[0]
        except sqlite3.Error:
            top = None
        limit = int(top) if top is not None else (1 << 40)
        last = good = 0
        while True:
            try:
                for r in self.conn.execute(f"{self.select} WHERE seq > ? ORDER BY seq", (last,)):
                    if int(r[0]) <= last:  # a damaged page answered nonsense
                        raise sqlite3.DatabaseError("seq out of order")
                    last = good = int(r[0])
                    self._keep(last, r)
                return
            except sqlite3.Error:
                pass
            found = self._step_over(last, good, limit)
            if not found:
                return
            for seq in found:
                try:
                    self._keep(seq, self.conn.execute(f"{self.select} WHERE seq = ?",
                                                      (seq,)).fetchone())
                except sqlite3.Error:
                    self.unreadable.add(seq)
            last = good = found[-1]

    def _keep(self, seq: int, r: Any) -> None:
        try:
            row = Row(int(r[0]), str(r[1]), str(r[2]), int(r[3]), bytes(r[4]), int(r[5]),
                      float(r[6]), None if r[7] is None else float(r[7]))
            event = decode_event(row.body)
            if event.id != row.id or event.seq != row.seq:
                raise ValueError("row and its body disagree")
        except Exception:  # any way a damaged row fails to read counts the same
            self.unreadable.add(seq)
            return
        self.rows.setdefault(seq, row)

    def _seek(self, seq: int, op: str) -> int | None:
        order = "ASC" if op == ">" else "DESC"
        r = self.conn.execute(f"SELECT seq FROM {self.table} WHERE seq {op} ? "
                              f"ORDER BY seq {order} LIMIT 1", (seq,)).fetchone()
        return None if r is None else int(r[0])

    def _step_over(self, last: int, good: int, limit: int) -> list[int]:
        """The next seqs that can be found after a damaged stretch following `last`."""
        pos, step = last, 1
        while pos < limit:
            try:
                found = self._seek(pos, ">")
                if found is not None and found <= pos:
                    raise sqlite3.DatabaseError("seq out of order")
            except sqlite3.Error:
                pos += step
                step *= 2
                continue
            if found is None:
                self.tail_failed = True
                return []
            back, missed = found, []
            with contextlib.suppress(sqlite3.Error):
                while ((prev := self._seek(back, "<")) is not None and good < prev < back
                       and prev not in self.rows and prev not in self.unreadable):
                    missed.append(prev)
                    back = prev
            if good:  # before the first row found, nothing tells where the table began
                self.skipped += found - good - 1 - len(missed)
            return [*reversed(missed), found]
        self.tail_failed = True
        return []
