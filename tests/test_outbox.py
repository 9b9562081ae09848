"""The durable outbox on real SQLite files: order, restart, bound and eviction, disk full."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until

from edge.contract.events import (
    AlarmPanic,
    ButtonBroadcast,
    ButtonPayload,
    PanicPayload,
    Status,
    StatusPayload,
    decode_event,
    stamp,
    text,
)
from edge.store import repair
from edge.store.outbox import SEQ_BLOCK, Outbox, OutboxError, OutboxFull


def alarm() -> AlarmPanic:
    return AlarmPanic(station="v001", township="t01",
                      payload=PanicPayload(source="simulator", held_s=0.0), **stamp())


def broadcast() -> ButtonBroadcast:
    return ButtonBroadcast(station="v001", township="t01",
                           payload=ButtonPayload(button="broadcast", source="simulator",
                                                 held_s=0.0), **stamp())


def status(size: int = 0) -> Status:
    return Status(station="v001", township="t01",
                  payload=StatusPayload(code="test", level="info", message=text("测试", "test"),
                                        detail={"pad": "x" * size}), **stamp())


def test_accepted_events_survive_reopen_with_sequence_and_order(tmp_path: Path):
    box = Outbox(tmp_path / "o.db")
    box.start()
    made = [status(), broadcast(), alarm(), status(), alarm(), broadcast()]
    stored = [box.append(e) for e in made]
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5, 6]
    box.mark_delivered(3, len(stored[2].body))
    box.close()

    box = Outbox(tmp_path / "o.db")
    box.start()
    pending = box.pending({}, 100)
    # Drain order: priority, then sequence; the delivered alarm is gone.
    assert [(p.priority, p.seq) for p in pending] == [(0, 5), (2, 2), (2, 6), (3, 1), (3, 4)]
    assert [decode_event(p.body).id for p in pending] == [made[i].id for i in (4, 1, 5, 0, 3)]
    assert all(decode_event(p.body).seq == p.seq for p in pending)
    # Cursors skip rows already handed to the uplink in this process.
    assert [p.seq for p in box.pending({0: 5, 2: 2}, 100)] == [6, 1, 4]
    assert [p.seq for p in box.pending({}, 2)] == [5, 2]
    assert box.append(status()).seq == 7, "sequence continues after a restart"
    box.close()


def test_group_commit_many_concurrent_submissions(tmp_path: Path):
    box = Outbox(tmp_path / "o.db", batch_max=200)
    box.start()
    futures = [box.submit(broadcast()) for _ in range(2000)]
    seqs = [f.result(30).seq for f in futures]
    assert seqs == list(range(1, 2001))
    box.close()
    box = Outbox(tmp_path / "o.db")
    box.start()
    assert box.pending_count() == 2000
    box.close()


def test_delivered_history_is_trimmed_to_keep_delivered(tmp_path: Path):
    from edge.store.outbox import _CLEANUP_EVERY

    box = Outbox(tmp_path / "o.db", keep_delivered=100)
    box.start()
    futures = [box.submit(broadcast()) for _ in range(_CLEANUP_EVERY + 200)]
    stored = [f.result(30) for f in futures]
    for s in stored:
        box.mark_delivered(s.seq, len(s.body))
    box.flush()
    box.close()
    box = Outbox(tmp_path / "o.db")
    box.start()
    assert box.pending_count() == 0
    assert box.lookup(stored[-1].id) == ("button.broadcast", True)
    assert box.lookup(stored[0].id) is None, "old delivered rows are cleaned up"
    box.close()


def test_full_outbox_evicts_oldest_lowest_priority_never_alarms(tmp_path: Path, caplog):
    evictions = []
    box = Outbox(tmp_path / "o.db", max_bytes=60_000, on_evict=evictions.append)
    box.start()
    alarms = [box.append(alarm()) for _ in range(20)]
    broadcasts = [box.append(broadcast()) for _ in range(20)]
    statuses = [box.append(status(size=1000)) for _ in range(30)]
    assert not evictions
    with caplog.at_level(logging.WARNING, logger="edge.outbox"):
        more = [box.append(status(size=1000)) for _ in range(20)]
        box.flush()  # on_evict runs after the batch's futures resolve
    assert evictions, "the bound was crossed"
    pending_ids = {p.id for p in box.pending({}, 10_000)}
    assert {a.id for a in alarms} <= pending_ids
    assert {b.id for b in broadcasts} <= pending_ids, "NORMAL kept while TELEMETRY remains"
    evicted = [s for s in statuses if s.id not in pending_ids]
    assert evicted and evicted == statuses[: len(evicted)], "oldest first"
    assert {m.id for m in more} <= pending_ids
    line = next(r for r in caplog.records if r.getMessage() == "outbox.evicted")
    assert line.fields["count"] >= 1 and "alarms kept" in line.fields["action"]
    assert sum(e.count for e in evictions) == len(evicted)

    # Alarms push out everything else, and are kept even past the bound.
    with caplog.at_level(logging.ERROR, logger="edge.outbox"):
        late_alarms = [box.append(alarm(), timeout=5) for _ in range(300)]
    pending = box.pending({}, 100_000)
    assert [p.id for p in pending] == [a.id for a in alarms + late_alarms]
    assert any(r.getMessage() == "outbox.full_of_alarms" for r in caplog.records)
    # With only alarms left, another event is refused, and says so.
    with pytest.raises(OutboxFull, match="not kept"):
        box.append(broadcast())
    box.close()


@contextlib.contextmanager
def tiny_disk(path: Path, size: str = "384k") -> Iterator[Path]:
    """A real filesystem that really fills up (tmpfs; needs root, as CI has)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("disk-full test mounts a tmpfs and needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 1024)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_refuses_clearly_then_recovers(tmp_path: Path, caplog):
    with tiny_disk(tmp_path / "disk") as disk:
        box = Outbox(disk / "o.db")
        box.start()
        first = box.append(alarm())
        filler = fill(disk)
        with caplog.at_level(logging.ERROR, logger="edge.outbox"):
            futures = [box.submit(status(size=2000)) for _ in range(100)]
            box.flush()
        errors = [f.exception() for f in futures]
        assert all(isinstance(e, OutboxError) for e in errors), errors[:3]
        assert "full" in str(errors[0])
        line = next(r for r in caplog.records if r.getMessage() == "outbox.write_failed")
        assert "free space" in line.fields["action"]
        assert box.pending_count() == 1

        filler.unlink()
        after = box.append(alarm())
        assert after.seq == first.seq + 1, "refused events took no sequence numbers"
        box.close()
        box = Outbox(disk / "o.db")
        box.start()
        assert [p.id for p in box.pending({}, 10)] == [first.id, after.id]
        box.close()


def test_station_on_full_disk_still_sends_the_alarm(tmp_path: Path, broker, township_factory):
    from conftest import make_config

    from edge.station import Station

    township = township_factory(broker.port)
    with tiny_disk(tmp_path / "disk") as disk:
        station = Station(make_config(disk / "station", broker.port))
        station.start()
        try:
            wait_until(lambda: station.uplink.connected)
            filler = fill(disk)
            station.recorder.record(status(size=60_000))  # big enough that the WAL must grow
            future = station.alarm.raise_alarm("simulator", 0.0)
            with pytest.raises(OutboxError):
                future.result(5)
            got = wait_until(lambda: [e for e in township.events()
                                      if e["type"] == "alarm.panic"], what="volatile alarm")
            assert got[0]["seq"] == 0, "sent from memory: no durable sequence number"
            state = wait_until(lambda: [s for s in township.on("/v001/state")
                                        if any(p["code"] == "outbox_failed"
                                               for p in s.get("problems", []))])
            assert "cannot be stored" in state[-1]["problems"][0]["message"]["en"]
            filler.unlink()
            ok = station.alarm.raise_alarm("simulator", 0.0).result(5)
            wait_until(lambda: ok.id in {e["id"] for e in township.events()})
            wait_until(lambda: not station.health.problems(), what="problem cleared")
        finally:
            station.stop()


def test_seq_mark_is_written_once_per_block_not_per_event(tmp_path: Path):
    box = Outbox(tmp_path / "outbox.db")
    box.start()
    mark = tmp_path / "outbox.seq"
    inode = mark.stat().st_ino  # every write is a new file renamed over the old one
    for _ in range(SEQ_BLOCK // 2 - 5):
        box.append(broadcast())
    assert mark.stat().st_ino == inode, "no write of the mark for an event inside the block"
    stored = [box.append(broadcast()) for _ in range(SEQ_BLOCK)]
    ceiling = json.loads(mark.read_bytes())["ceiling"]
    assert stored[-1].seq < ceiling <= stored[-1].seq + SEQ_BLOCK + 1
    box.close()
    assert json.loads(mark.read_bytes())["clean_next"] == stored[-1].seq + 1


def test_a_replaced_older_database_cannot_make_seq_repeat(tmp_path: Path):
    db = tmp_path / "outbox.db"
    box = Outbox(db)
    box.start()
    box.append(alarm())
    box.close()
    older = tmp_path / "older.db"
    older.write_bytes(db.read_bytes())
    box = Outbox(db)
    box.start()
    last = [box.append(broadcast()) for _ in range(5)][-1]
    box.close()
    db.write_bytes(older.read_bytes())  # e.g. restored from an old copy after a clean stop

    box = Outbox(db)
    box.start()
    assert box.damage is not None and box.damage.kind == "rolled_back"
    assert box.append(broadcast()).seq == last.seq + 1
    box.close()


def test_salvage_reads_rows_around_a_garbled_page_alarms_first(tmp_path: Path):
    db = tmp_path / "outbox.db"
    box = Outbox(db)
    box.start()
    made = [box.append(alarm() if i % 10 == 0 else status(size=400)) for i in range(300)]
    box.close()
    size = db.stat().st_size
    with open(db, "r+b") as f:  # one leaf page of the events table, in the middle
        f.seek(size // 2 // 4096 * 4096)
        f.write(b"\xff" * 4096)

    box = Outbox(db)
    box.start()
    damage = box.damage
    assert damage is not None and damage.kind == "corrupt"
    assert damage.salvaged + (damage.lost or 0) == len(made) and damage.salvaged > 250
    kept = tmp_path / str(damage.quarantined)
    assert kept.read_bytes()[size // 2 // 4096 * 4096:][:4096] == b"\xff" * 4096, "kept as found"
    pending = box.pending({}, 1000)
    assert len(pending) == damage.salvaged
    assert [p.priority for p in pending] == sorted(p.priority for p in pending)
    by_id = {m.id: m.seq for m in made}
    assert all(by_id[p.id] == p.seq for p in pending), "salvaged rows keep their seq"
    assert box.append(alarm()).seq > made[-1].seq
    box.close()


def page_size(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_an_outbox_with_4k_pages_is_rebuilt_with_small_ones_keeping_its_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    db = tmp_path / "o.db"
    monkeypatch.setattr(repair, "PAGE_SIZE", 4096)  # as outboxes were created before
    box = Outbox(db)
    box.start()
    stored = [box.append(e) for e in (alarm(), status(3000), broadcast())]
    box.mark_delivered(stored[0].seq, len(stored[0].body))
    box.close()
    assert page_size(db) == 4096
    monkeypatch.undo()

    box = Outbox(db)
    box.start()
    try:
        assert page_size(db) == repair.PAGE_SIZE < 4096
        assert box.damage is None
        assert [(p.seq, p.body) for p in box.pending({}, 10)] == [  # broadcast, then status
            (s.seq, s.body) for s in (stored[2], stored[1])]
        assert box.lookup(stored[0].id) == ("alarm.panic", True)
        assert box.append(alarm()).seq == 4
    finally:
        box.close()


def test_a_seq_evicted_at_the_top_is_not_used_again(tmp_path: Path):
    """The next seq is the highest row's plus one: an eviction that removes the highest
    row must leave the counter behind (the seq mark is removed to test the database)."""
    db = tmp_path / "o.db"
    box = Outbox(db, max_bytes=500)
    box.start()
    assert [box.append(alarm()).seq for _ in range(3)] == [1, 2, 3]
    with pytest.raises(OutboxFull):
        box.append(status())  # seq 4, over the bound, evicted at once
    box.close()
    db.with_suffix(".seq").unlink()
    box = Outbox(db, max_bytes=500)
    box.start()
    try:
        assert box.append(alarm()).seq == 5
    finally:
        box.close()


def test_an_outbox_another_process_holds_is_not_taken_for_damage(tmp_path: Path):
    """The outbox is one process's (unix-excl: its WAL index is in memory, not on the card).
    A second opener finds it locked: it refuses events and quarantines nothing."""
    db = tmp_path / "o.db"
    box = Outbox(db)
    box.start()
    kept = box.append(alarm())
    box.close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({(db.absolute().as_uri() + '?vfs=unix-excl')!r}, uri=True)\n"
         "c.execute('SELECT COUNT(*) FROM events').fetchall()\n"
         "print('held', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        second = Outbox(db, close_s=1.0)
        second.start()
        assert second.unwritable is not None and "locked" in second.unwritable
        with pytest.raises(OutboxError):
            second.append(alarm(), timeout=30)
        second.close()
        assert not (tmp_path / repair.QUARANTINE).exists()
    finally:
        holder.communicate("")
    box = Outbox(db)
    box.start()
    assert [p.id for p in box.pending({}, 10)] == [kept.id]
    box.close()
