"""The outbox on disk: bytes written per isolated event, and the start-up cost of damage.

What it measures
    1. bytes/event: one `edge.store.outbox.Outbox` (WAL, synchronous=FULL) on `--tmpdir`;
       `--events` isolated alarms, each appended, marked delivered (its PUBACK) and
       committed before the next (the ack batch's linger is waited out), as a quiet
       station sees them. The figure is this process's `write_bytes` from
       /proc/self/io over the run, divided by the events: what reaches the block layer,
       including SQLite's WAL frames, checkpoints, the seq mark (one write per
       `SEQ_BLOCK` events) and the file system's journal where it is charged to us.
       Median of the per-event deltas beside the mean. Baseline in the same run: the
       same rows through a plain sqlite3 WAL table, synchronous=FULL, one commit per
       insert and one per delivery mark.
    2. open: an outbox of `--rows` pending events (1 % alarms, the rest ~1 KB status),
       closed cleanly, opened again (sound: quick_check only), then one 4 KiB page in
       the middle overwritten with 0xff and opened again (quarantine + salvage into a
       fresh outbox). Seconds to construct the Outbox, best of `--repeat` for the sound
       open; salvaged/lost as reported.

    .venv/bin/python bench/outbox_store.py --tmpdir /var/tmp
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_tmp_args, fs_of, loadavg, machine_line, run_in_tmp

from edge.contract.events import AlarmPanic, PanicPayload, Status, StatusPayload, stamp, text
from edge.store.outbox import _ACK_LINGER_S, SEQ_BLOCK, Outbox


def write_bytes() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("write_bytes"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def alarm() -> AlarmPanic:
    return AlarmPanic(station="v001", township="t01",
                      payload=PanicPayload(source="simulator", held_s=0.0), **stamp())


def status(pad: int) -> Status:
    return Status(station="v001", township="t01",
                  payload=StatusPayload(code="bench", level="info", message=text("测", "b"),
                                        detail={"pad": "x" * pad}), **stamp())


def per_event(box_dir: Path, events: int) -> tuple[float, float, int]:
    box = Outbox(box_dir / "outbox.db")
    box.start()
    deltas = []
    start = write_bytes()
    size = 0
    for _ in range(events):
        before = write_bytes()
        stored = box.append(alarm())
        size = len(stored.body)
        box.mark_delivered(stored.seq, size)
        time.sleep(_ACK_LINGER_S + 0.01)
        box.flush()
        deltas.append(write_bytes() - before)
    total = write_bytes() - start
    box.close()
    return total / events, statistics.median(deltas), size


def plain_sqlite(db: Path, events: int) -> float:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB, delivered REAL)")
    body = b"x" * 220
    start = write_bytes()
    for seq in range(1, events + 1):
        with conn:
            conn.execute("INSERT INTO events VALUES (?, ?, NULL)", (seq, body))
        with conn:
            conn.execute("UPDATE events SET delivered = 1 WHERE seq = ?", (seq,))
    total = write_bytes() - start
    conn.close()
    return total / events


def opening(folder: Path, rows: int, repeat: int) -> None:
    db = folder / "outbox.db"
    box = Outbox(db, max_bytes=1 << 40, batch_max=2000)
    box.start()
    futures = [box.submit(alarm() if i % 100 == 0 else status(900)) for i in range(rows)]
    for f in futures:
        f.result(300)
    box.close()
    size = db.stat().st_size
    sound = []
    for _ in range(repeat):
        started = time.monotonic()
        Outbox(db, max_bytes=1 << 40).close()
        sound.append(time.monotonic() - started)
    with open(db, "r+b") as file:
        file.seek(size // 2 // 4096 * 4096)
        file.write(b"\xff" * 4096)
    started = time.monotonic()
    box = Outbox(db, max_bytes=1 << 40)
    box.start()
    damaged = time.monotonic() - started
    damage = box.damage
    box.close()
    assert damage is not None
    print(f"open, {rows} pending rows ({size / 2**20:.0f} MiB): sound {min(sound):.2f} s "
          f"(best of {repeat}); one page garbled {damaged:.2f} s "
          f"(salvaged {damage.salvaged}, lost {damage.lost})")


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    print(f"data on {fs_of(tmp)}")
    (tmp / "a").mkdir()
    mean, median, size = per_event(tmp / "a", args.events)
    floor = plain_sqlite(tmp / "plain.db", args.events)
    print(f"bytes written per isolated event ({args.events} alarms of {size} B, "
          f"seq mark every {SEQ_BLOCK}): mean {mean:.0f}, median {median:.0f}; "
          f"plain sqlite WAL+FULL, commit per insert and per mark: {floor:.0f} "
          f"(ratio {mean / floor:.2f})")
    shutil.rmtree(tmp / "a")
    (tmp / "b").mkdir()
    opening(tmp / "b", args.rows, args.repeat)
    print(machine_line(load))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--repeat", type=int, default=3)
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "outbox-store-", run)


if __name__ == "__main__":
    sys.exit(main())
