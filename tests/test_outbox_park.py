"""Parked rows (the broker kept refusing them): out of the drain, kept on disk with the
reason, never evicted, and back in the drain when the outbox is opened again."""

from __future__ import annotations

from pathlib import Path

from test_outbox import alarm, broadcast, status

from edge.store.outbox import Outbox


def test_parked_row_leaves_the_drain_survives_and_returns_on_reopen(tmp_path: Path):
    box = Outbox(tmp_path / "o.db", max_bytes=16384)
    box.start()
    stored = [box.append(e) for e in (alarm(), broadcast(), status())]
    box.park(stored[0].seq, "Not authorized")
    box.park(999, "Not authorized")  # unknown row: ignored
    assert box.flush()
    assert [p.seq for p in box.pending({}, 100)] == [2, 3]
    assert box.pending_count() == 2
    assert box.parked() == [(1, "alarm.panic", "Not authorized")]
    # Filling the outbox evicts telemetry, never the parked alarm.
    for _ in range(40):
        box.submit(status(1000))
    assert box.flush()
    assert box.parked() == [(1, "alarm.panic", "Not authorized")]
    box.close()

    box = Outbox(tmp_path / "o.db", max_bytes=16384)
    box.start()
    pending = box.pending({}, 100)
    assert pending[0].seq == 1 and pending[0].body == stored[0].body
    assert box.parked() == []
    assert box.lookup(stored[0].id) == ("alarm.panic", False)
    box.close()
