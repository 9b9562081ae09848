"""The loudspeaker's durable state in <data_dir>/audio.db: schedules (so they run while
the link is down and after a restart) and the broadcast volume."""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import msgspec

from edge.contract.commands import ScheduleSet
from edge.store import private, schema

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY, body BLOB NOT NULL, last_fired TEXT);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AudioStore:
    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        private.create(path)
        self._db = sqlite3.connect(private.sqlite_uri(path), check_same_thread=False,
                                   isolation_level=None, uri=True)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        schema.adopt(self._db, "audio.db")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def put_schedule(self, spec: ScheduleSet) -> None:
        body = msgspec.json.encode(spec)
        with self._lock:
            # A changed schedule keeps last_fired: re-sending it must not fire it twice.
            self._db.execute(
                "INSERT INTO schedules (id, body) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body", (spec.schedule_id, body))

    def clear_schedules(self, schedule_id: str | None) -> int:
        with self._lock:
            if schedule_id is None:
                return self._db.execute("DELETE FROM schedules").rowcount
            return self._db.execute("DELETE FROM schedules WHERE id = ?",
                                    (schedule_id,)).rowcount

    def schedules(self) -> list[tuple[ScheduleSet, datetime | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT body, last_fired FROM schedules ORDER BY id").fetchall()
        return [(msgspec.json.decode(body, type=ScheduleSet),
                 datetime.fromisoformat(last) if last else None) for body, last in rows]

    def mark_fired(self, schedule_id: str, minute: datetime) -> None:
        with self._lock:
            self._db.execute("UPDATE schedules SET last_fired = ? WHERE id = ?",
                             (minute.isoformat(), schedule_id))

    def volume(self, default: float) -> float:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = 'volume'").fetchone()
        return float(row[0]) if row else default

    def set_volume(self, volume: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO settings VALUES ('volume', ?)",
                             (repr(volume),))
