"""Burst throughput of the outbox: its small pages against the same outbox with 4 KiB pages.

What it measures
    `edge.store.outbox.Outbox` on `--tmpdir` (WAL, synchronous=FULL on accept), `--events`
    events of ~220 B (button.broadcast) submitted at once and waited for (group commit:
    the durable enqueue of an outage), then every one marked delivered and flushed (the
    drain's PUBACKs). Events per second for each phase.

    outbox:  as it ships: 1 KiB pages (fewer bytes written per isolated alarm, see
             bench/disk_writes.py), marks in batches of up to 4 x batch_max, delivered
             history trimmed every 5,000 marks.
    4 KiB:   the same code with SQLite's default 4 KiB pages, marks in batches of
             batch_max and trimming every 1,000 marks: the outbox as it was before the
             pages were made small. The baseline, in the same run.

    The two run interleaved, `--rounds` times, each on a fresh database; medians.

Run
    .venv/bin/python bench/outbox_burst.py --tmpdir /var/tmp
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_tmp_args, fs_of, loadavg, machine_line, run_in_tmp

from edge.contract.events import ButtonBroadcast, ButtonPayload, stamp
from edge.store import outbox as outbox_mod
from edge.store import repair

SHIPPED = {"PAGE_SIZE": repair.PAGE_SIZE, "_ACK_BATCH_X": outbox_mod._ACK_BATCH_X,
           "_CLEANUP_EVERY": outbox_mod._CLEANUP_EVERY}
BEFORE = {"PAGE_SIZE": 4096, "_ACK_BATCH_X": 1, "_CLEANUP_EVERY": 1000}


def settings(values: dict[str, int]) -> None:
    repair.PAGE_SIZE = values["PAGE_SIZE"]
    outbox_mod._ACK_BATCH_X = values["_ACK_BATCH_X"]
    outbox_mod._CLEANUP_EVERY = values["_CLEANUP_EVERY"]


def one(folder: Path, values: dict[str, int], n: int) -> tuple[float, float]:
    settings(values)
    work = Path(tempfile.mkdtemp(dir=folder))
    box = outbox_mod.Outbox(work / "outbox.db", max_bytes=1 << 30)
    box.start()
    try:
        events = [ButtonBroadcast(payload=ButtonPayload(button="broadcast", source="button",
                                                        held_s=0.0),
                                  station="v001", township="t01", **stamp()) for _ in range(n)]
        t0 = time.perf_counter()
        futures = [box.submit(e) for e in events]
        stored = [f.result(120) for f in futures]
        enqueue = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for s in stored:
            box.mark_delivered(s.seq, len(s.body))
        if not box.flush(120):
            raise RuntimeError("marks not committed")
        mark = n / (time.perf_counter() - t0)
    finally:
        box.close()
        shutil.rmtree(work)
    return enqueue, mark


def run(args: argparse.Namespace, tmp: Path) -> int:
    load_before = loadavg()
    results: dict[str, list[tuple[float, float]]] = {"outbox": [], "4 KiB": []}
    for _ in range(args.rounds):
        results["outbox"].append(one(tmp, SHIPPED, args.events))
        results["4 KiB"].append(one(tmp, BEFORE, args.events))
    settings(SHIPPED)
    print(f"outbox burst: {args.events} events submitted at once, then all marked delivered; "
          f"medians of {args.rounds} interleaved rounds")
    print(machine_line(load_before))
    print(f"data on {fs_of(tmp)}")
    med = {k: (statistics.median(e for e, _ in v), statistics.median(m for _, m in v))
           for k, v in results.items()}
    print(f"  {'':10} {'enqueue/s':>12} {'mark/s':>12}")
    for name, (enq, mark) in med.items():
        print(f"  {name:10} {enq:12,.0f} {mark:12,.0f}")
    print(f"  {'ratio':10} {med['outbox'][0] / med['4 KiB'][0]:12.2f} "
          f"{med['outbox'][1] / med['4 KiB'][1]:12.2f}   (outbox / 4 KiB; >= 1 is no loss)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "pingan-bench-burst-", run)


if __name__ == "__main__":
    sys.exit(main())
