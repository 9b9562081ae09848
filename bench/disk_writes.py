"""Bytes written to disk: the outbox against persist-queue, and an idle station.

What it measures
    Bytes are this process's `write_bytes` from /proc/self/io: what it hands the block
    layer (page-cache pages it dirties, counted once per 4 KiB page until written back),
    including SQLite's WAL frames, checkpoints and the seq mark file. An SD card wears by
    these bytes; each isolated event also costs one fsync.

    outbox: `edge.store.outbox.Outbox` (durable on accept: WAL + synchronous=FULL, fsync per
        commit) on `--tmpdir`, a real alarm of ~220 B.
        - isolated event: one `append` (its commit) with nothing else queued;
        - isolated mark: its PUBACK (`mark_delivered`), committed after the ack linger;
          "alarm" = event + mark, the figure the issue's goal is about;
        - burst: `--burst` events submitted at once (group commit), then all marked.
        Medians hide the WAL checkpoint (every 1,000 WAL pages); the mean shows it.
    persist-queue: `persistqueue.SQLiteAckQueue` with its defaults (WAL, SQLite's default
        synchronous=FULL, auto_commit: one transaction per call), the same body bytes:
        - isolated put; isolated get + ack (its delivery mark needs both);
        - burst: `--burst` puts, then gets + acks.
    plain sqlite: one WAL table (seq INTEGER PRIMARY KEY, body), synchronous=FULL, one
        commit per insert and one per mark: the floor of a durable SQLite row.

    The three run interleaved, `--rounds` times, each on a fresh database; medians of the
    per-event deltas within a round, then the median over rounds.

    idle: a real station process (`python -m edge.cli run`, simulated pins, no camera, no
        audio device needed) on a private Mosquitto; after it came online (its state
        message) and `--settle-s`, its /proc/<pid>/io write_bytes is read over `--idle-s`
        seconds and scaled to an hour.

Run
    .venv/bin/python bench/disk_writes.py --tmpdir /var/tmp
    .venv/bin/python bench/disk_writes.py --events 50 --rounds 1 --idle-s 10   # quick
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    STATION,
    TOWNSHIP,
    add_tmp_args,
    fs_of,
    loadavg,
    machine_line,
    run_in_tmp,
    station_process,
)
from persistqueue import SQLiteAckQueue

from edge.contract.events import AlarmPanic, PanicPayload, encode, stamp
from edge.store.outbox import _ACK_LINGER_S, Outbox


def write_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("write_bytes"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


def alarm() -> AlarmPanic:
    return AlarmPanic(station=STATION, township=TOWNSHIP,
                      payload=PanicPayload(source="simulator", held_s=0.0), **stamp())


Figures = dict[str, float]


def outbox_run(folder: Path, events: int, burst: int) -> Figures:
    box = Outbox(folder / "outbox.db", batch_max=burst)
    box.start()
    try:
        box.append(alarm())  # the schema and first pages exist before measuring
        box.flush()
        ev, mk, size = [], [], 0
        for _ in range(events):
            before = write_bytes()
            stored = box.append(alarm())
            ev.append(write_bytes() - before)
            size = len(stored.body)
            before = write_bytes()
            box.mark_delivered(stored.seq, size)
            time.sleep(_ACK_LINGER_S + 0.01)  # the linger runs out: an isolated ack
            box.flush()
            mk.append(write_bytes() - before)
        before = write_bytes()
        futures = [box.submit(alarm()) for _ in range(burst)]
        done = [f.result(60) for f in futures]
        burst_put = write_bytes() - before
        before = write_bytes()
        for s in done:
            box.mark_delivered(s.seq, len(s.body))
        box.flush()
        burst_ack = write_bytes() - before
    finally:
        box.close()
    return {"event": statistics.median(ev), "mark": statistics.median(mk),
            "alarm": statistics.median(e + m for e, m in zip(ev, mk, strict=True)),
            "alarm_mean": (sum(ev) + sum(mk)) / events,
            "burst_event": burst_put / burst, "burst_mark": burst_ack / burst,
            "size": size}


def persist_queue_run(folder: Path, events: int, burst: int, body: bytes) -> Figures:
    q = SQLiteAckQueue(str(folder / "pq"))
    try:
        q.put(body)
        q.ack(q.get())
        ev, get, ack = [], [], []
        for _ in range(events):
            before = write_bytes()
            q.put(body)
            ev.append(write_bytes() - before)
            before = write_bytes()
            item = q.get()
            get.append(write_bytes() - before)
            before = write_bytes()
            q.ack(item)
            ack.append(write_bytes() - before)
        before = write_bytes()
        for _ in range(burst):
            q.put(body)
        burst_put = write_bytes() - before
        before = write_bytes()
        for _ in range(burst):
            q.ack(q.get())
        burst_ack = write_bytes() - before
    finally:
        q.close()
    return {"event": statistics.median(ev), "get": statistics.median(get),
            "mark": statistics.median(ack),
            "alarm": statistics.median(e + g + a for e, g, a in zip(ev, get, ack, strict=True)),
            "alarm_mean": (sum(ev) + sum(get) + sum(ack)) / events,
            "burst_event": burst_put / burst, "burst_mark": burst_ack / burst}


def plain_run(db: Path, events: int, body: bytes) -> Figures:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB, delivered REAL)")
    ev, mk = [], []
    try:
        for seq in range(1, events + 1):
            before = write_bytes()
            with conn:
                conn.execute("INSERT INTO events VALUES (?, ?, NULL)", (seq, body))
            ev.append(write_bytes() - before)
            before = write_bytes()
            with conn:
                conn.execute("UPDATE events SET delivered = 1 WHERE seq = ?", (seq,))
            mk.append(write_bytes() - before)
    finally:
        conn.close()
    return {"event": statistics.median(ev), "mark": statistics.median(mk),
            "alarm": statistics.median(e + m for e, m in zip(ev, mk, strict=True)),
            "alarm_mean": (sum(ev) + sum(mk)) / events}


def idle_station(tmp: Path, settle_s: float, idle_s: float) -> tuple[float, int]:
    """(bytes per hour, seconds measured) of a real idle station process."""
    with station_process(tmp, tmp / "station", "edge.cli") as station:
        pid = station.proc.pid
        time.sleep(settle_s)
        start, t0 = write_bytes(pid), time.monotonic()
        time.sleep(idle_s)
        written, took = write_bytes(pid) - start, time.monotonic() - t0
        if station.proc.poll() is not None:
            raise RuntimeError("the station exited while idle")
    return written * 3600 / took, written


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    print(f"data on {fs_of(tmp)}")
    body = encode(alarm())
    rounds: dict[str, list[Figures]] = {"outbox": [], "persist-queue": [], "plain": []}
    for r in range(args.rounds):
        for name in rounds:
            folder = tmp / f"{name}-{r}"
            folder.mkdir()
            if name == "outbox":
                rounds[name].append(outbox_run(folder, args.events, args.burst))
            elif name == "persist-queue":
                rounds[name].append(persist_queue_run(folder, args.events, args.burst, body))
            else:
                rounds[name].append(plain_run(folder / "plain.db", args.events, body))

    def med(name: str, key: str) -> float:
        return statistics.median(f[key] for f in rounds[name])

    print(f"bytes written per event ({args.events} isolated alarms of "
          f"{med('outbox', 'size'):.0f} B, then a burst of {args.burst}; median per event, "
          f"median of {args.rounds} interleaved rounds)")
    print(f"{'':34}{'outbox':>10}{'persist-q':>11}{'plain':>9}  outbox/persist-q")
    rows = [("isolated event (commit, fsync)", "event"),
            ("isolated mark (PUBACK / get+ack)", "mark"),
            ("isolated alarm: event + mark", "alarm"),
            ("  the same, mean (checkpoints too)", "alarm_mean"),
            ("burst event", "burst_event"), ("burst mark", "burst_mark")]
    for label, key in rows:
        pq = med("persist-queue", key)
        if key == "mark":
            pq += med("persist-queue", "get")
        plain = f"{med('plain', key):9.0f}" if key in rounds["plain"][0] else f"{'-':>9}"
        ours = med("outbox", key)
        print(f"{label:34}{ours:10.0f}{pq:11.0f}{plain}  {ours / pq:.2f}")
    print(f"  persist-queue's isolated mark is get {med('persist-queue', 'get'):.0f} + "
          f"ack {med('persist-queue', 'mark'):.0f}")
    if args.idle_s > 0:
        per_hour, written = idle_station(tmp / "idle", args.settle_s, args.idle_s)
        print(f"idle station process: {written} B in {args.idle_s:.0f} s -> "
              f"{per_hour:.0f} B/hour")
    print(machine_line(load))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=120.0)
    parser.add_argument("--settle-s", type=float, default=5.0)
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "disk-writes-", run)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
