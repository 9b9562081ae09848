"""The data partition's schema version, in each of the station's databases (the outbox,
the SMS log, the audio store): what survives an update and a rollback.

Migrations only add (a table, a column with a default, an index), so the release before
still reads what the new one wrote. Each database holds one row: the newest schema any
release wrote into it (`version`), and the oldest release schema that can still read it
(`min_reader`). A release refuses to start on data whose `min_reader` is newer than its own
schema: the unit's commit check then fails, and it goes back to the slot that can.

Raise DATA_SCHEMA with every migration; raise MIN_READER only for a change that is not
additive (and then the release's `min_data_schema` too).
"""

from __future__ import annotations

import sqlite3

DATA_SCHEMA = 1
MIN_READER = 1


class DataSchemaError(Exception):
    """The data was written by a release this one cannot read."""


def adopt(conn: sqlite3.Connection, name: str) -> int:
    """Check and stamp `conn`'s schema; returns the version found (0: before versions)."""
    conn.execute("CREATE TABLE IF NOT EXISTS data_schema (id INTEGER PRIMARY KEY "
                 "CHECK (id = 1), version INTEGER NOT NULL, min_reader INTEGER NOT NULL)")
    row = conn.execute("SELECT version, min_reader FROM data_schema").fetchone()
    found, min_reader = (int(row[0]), int(row[1])) if row else (0, 1)
    if min_reader > DATA_SCHEMA:
        raise DataSchemaError(
            f"{name}: its data needs a release that reads schema {min_reader} or newer; "
            f"this release reads up to {DATA_SCHEMA} and does not start (an update rolls "
            f"back to the slot that can; on site: install that release again)")
    if found < DATA_SCHEMA or min_reader < MIN_READER:
        conn.execute(
            "INSERT INTO data_schema (id, version, min_reader) VALUES (1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET version = max(version, excluded.version), "
            "min_reader = max(min_reader, excluded.min_reader)", (DATA_SCHEMA, MIN_READER))
    conn.commit()
    return found
