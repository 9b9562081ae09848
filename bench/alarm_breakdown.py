"""Where a lone alarm's time goes, step by step, from the press to the township.

What it measures
    The same station, private broker and out-of-process township subscriber as
    bench/alarm_latency.py (audio off), one press at a time. Each step is stamped with
    time.perf_counter() by wrapping the station's own methods in this process (edge/ is
    not modified): the press handler (`StationButtons._panic`), making the event
    (`Recorder.identity`), queueing it (`Outbox.submit`), the writer's transaction
    (`Outbox._transaction`: insert, commit, fsync), the uplink told (`Uplink.notify`), the
    publish (`Uplink._publish`, paho), and the arrival timed at the township. An fsync of
    1 KiB on the same disk is timed in the same rounds: the transaction's floor. The
    wrappers add a few microseconds per step.

    Medians and nearest-rank percentiles of each step, never means.

Run
    .venv/bin/python bench/alarm_breakdown.py              # 500 presses
    .venv/bin/python bench/alarm_breakdown.py --presses 100
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alarm_latency import STATION, station_under_test, wait_for
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp

from edge.link.uplink import Uplink
from edge.store.outbox import Outbox
from edge.store.recorder import Recorder
from edge.unit.buttons import StationButtons

STEPS = ["press", "handler", "event", "event made", "queued", "transaction",
         "committed", "uplink told", "publish", "published", "township"]
_stamps: dict[str, float] = {}


def _stamp(name: str) -> None:
    _stamps.setdefault(name, time.perf_counter())


def _wrap(cls: Any, method: str, before: str, after: str | None = None,
          only: Callable[..., bool] | None = None) -> None:
    original = getattr(cls, method)

    def wrapped(self: Any, *a: Any, **kw: Any) -> Any:
        timed = only is None or only(*a)
        if timed:
            _stamp(before)
        result = original(self, *a, **kw)
        if timed and after:
            _stamp(after)
        return result

    setattr(cls, method, wrapped)


def instrument() -> None:
    _wrap(StationButtons, "_panic", "handler")
    _wrap(Recorder, "identity", "event", "event made")
    _wrap(Outbox, "submit", "queued")
    _wrap(Outbox, "_transaction", "transaction", "committed",
          only=lambda appends, *_: bool(appends))
    _wrap(Uplink, "notify", "uplink told")
    _wrap(Uplink, "_publish", "publish", "published",
          only=lambda topic, *_: topic.endswith("/events"))


def run(args: argparse.Namespace, tmp: Path) -> int:
    load_before = loadavg()
    rounds: list[dict[str, float]] = []
    fsyncs: list[float] = []
    instrument()
    with station_under_test(tmp, audio=False) as (station, fsync, township, _port):
        pin = station.pin_factory.pin(station.config.pins.panic)
        seen: set[str] = set()
        for i in range(args.warmup + args.presses):
            _stamps.clear()
            _stamps["press"] = time.perf_counter()
            pin.drive_low()
            got = wait_for(township, STATION, seen, 5.0)
            pin.drive_high()
            time.sleep(args.gap_ms / 1000)
            took = fsync.once()
            time.sleep(args.gap_ms / 1000)
            if got is None or i < args.warmup:
                continue
            rounds.append({**_stamps, "township": got[0]})
            fsyncs.append(took)

    print("alarm breakdown: one press at a time, each step stamped in the station's process")
    print(machine_line(load_before))
    print(f"presses={len(rounds)} (+{args.warmup} warm-up), gap={args.gap_ms} ms")
    print(f"  {'step':<34} {'p50':>8} {'p90':>8} {'p99':>8}  ms")
    for a, b in itertools.pairwise(STEPS):
        ms = sorted((r[b] - r[a]) * 1000 for r in rounds if a in r and b in r)
        if ms:
            print(f"  {a + ' -> ' + b:<34} {statistics.median(ms):8.3f} {pct(ms, 90):8.3f} "
                  f"{pct(ms, 99):8.3f}   (n={len(ms)})")
    total = sorted((r["township"] - r["press"]) * 1000 for r in rounds)
    print(f"  {'press -> township':<34} {statistics.median(total):8.3f} {pct(total, 90):8.3f} "
          f"{pct(total, 99):8.3f}")
    fs = sorted(fsyncs)
    print(f"  {'fsync of 1 KiB (same rounds)':<34} {statistics.median(fs):8.3f} "
          f"{pct(fs, 90):8.3f} {pct(fs, 99):8.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    add_tmp_args(parser)
    return run_in_tmp(parser.parse_args(), "pingan-bench-breakdown-", run)


if __name__ == "__main__":
    sys.exit(main())
