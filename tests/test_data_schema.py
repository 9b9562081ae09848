"""Data survives updates and rollbacks (issue 22): the outbox, the SMS log and the audio
store each carry the data schema; an older stamp is brought up additively, and a release
that cannot read the data refuses to start (so the trial fails and the unit goes back)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import station_toml

from edge.audio.store import AudioStore
from edge.modem.fallback import SmsLog
from edge.store import schema
from edge.store.outbox import Outbox
from edge.store.schema import DataSchemaError


def stamp(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT version, min_reader FROM data_schema").fetchone()
    return int(row[0]), int(row[1])


def test_every_database_carries_the_schema_and_an_older_one_is_brought_up(
        tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20)
    outbox.start()
    outbox.close()
    SmsLog(tmp_path / "sms.db").close()
    AudioStore(tmp_path / "audio.db").close()
    for name in ("outbox.db", "sms.db", "audio.db"):
        assert stamp(tmp_path / name) == (schema.DATA_SCHEMA, schema.MIN_READER), name
    # A database from before versions (no table) is stamped, its rows kept.
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO settings VALUES ('volume', '0.5')")
    with sqlite3.connect(old) as conn:
        assert schema.adopt(conn, "old.db") == 0
        assert conn.execute("SELECT value FROM settings").fetchall() == [("0.5",)]
    assert stamp(old) == (schema.DATA_SCHEMA, schema.MIN_READER)


def test_data_from_a_newer_additive_release_is_read_and_its_stamp_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "audio.db"
    AudioStore(path).close()
    newer = schema.DATA_SCHEMA + 1
    with sqlite3.connect(path) as conn:  # what the next release leaves: a version up,
        conn.execute("UPDATE data_schema SET version = ?", (newer,))  # readers unchanged
        conn.execute("ALTER TABLE settings ADD COLUMN changed_by TEXT")
    store = AudioStore(path)  # the older release reads it (a rollback)
    store.close()
    assert stamp(path) == (newer, schema.MIN_READER), "a rollback never lowers the stamp"


def test_a_release_that_cannot_read_the_data_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outbox = Outbox(data / "outbox.db", max_bytes=1 << 20)
    outbox.start()
    outbox.close()
    with contextlib.closing(sqlite3.connect(data / "outbox.db")) as conn, conn:
        # A release with a breaking change (and then gone: the outbox is one process's).
        conn.execute("UPDATE data_schema SET version = 7, min_reader = 7")
    with pytest.raises(DataSchemaError, match="schema 7"):
        Outbox(data / "outbox.db", max_bytes=1 << 20)
    cfg = tmp_path / "station.toml"
    cfg.write_text(station_toml(data, 1, pins={"factory": "mock"}, audio={"enabled": False},
                                update={"enabled": False}))
    done = subprocess.run([sys.executable, "-m", "edge", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    line = next(json.loads(x) for x in done.stderr.splitlines()
                if '"station.cannot_start"' in x)
    assert "schema 7" in line["error"] and line["exit"] == 2
    # Nothing was moved aside or rewritten: the newer release finds its data as it left it.
    assert stamp(data / "outbox.db") == (7, 7)
