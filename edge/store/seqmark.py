"""The sequence high-water mark, kept outside the outbox database.

A lost write-ahead log, a truncated or zeroed `outbox.db` can take the database's own
counter back; this small file cannot be taken back with it, so `seq` never repeats and a
loss shows up at the township as a gap.

It holds a *ceiling*: no seq at or above it has been used. The outbox reserves seqs in
blocks ahead of use, so the file is rewritten (edge.store.durable) once per block of
events, never once per event: an SD card's write budget is the reason. `clean_next` is
written on a clean stop only: the exact next seq, so that a database found behind it on
the next start is known to have lost rows.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from edge.store import durable, private


class Mark(msgspec.Struct, forbid_unknown_fields=True):
    ceiling: int
    clean_next: int | None = None


class SeqMark:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> Mark | None:
        """The mark, or None when there is none yet (a new station) or it is unreadable."""
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Mark)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None  # the caller reports this; the database's counter must do

    def write(self, mark: Mark) -> None:
        """Durably replace the mark (the station's alone: 0600). Raises OSError."""
        durable.write(self.path, msgspec.json.encode(mark) + b"\n", mode=private.MODE)
