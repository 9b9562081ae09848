"""Does the outbox writer's direct send earn its keep? Panic press -> township, with the
writer handing a lone alarm straight to paho, and without (the pump thread sends it from
the database), interleaved press by press in one station.

What it measures
    The station and township of bench/alarm_latency.py (a real Station on mock pins, a
    private Mosquitto, the township subscriber in its own process, durable outbox). Each
    round presses twice: once with the direct send allowed (edge.link.uplink.DIRECT_MAX as
    shipped) and once without it (DIRECT_MAX = 0, so notify() always wakes the pump), the
    order alternating round by round, so that machine noise and drift hit both alike.
    Press -> arrival in the township's on_message, medians and nearest-rank percentiles.

    Run it on a quiet machine and on a loaded one (e.g. `stress-ng --cpu 2` beside it):
    the direct send exists to skip a thread wake-up, which costs most when cores are busy.

Run
    python3 bench/direct_send.py                   # 400 rounds (800 presses)
    python3 bench/direct_send.py --rounds 100      # quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from alarm_latency import STATION, station_under_test, wait_for
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp

from edge.link import uplink as uplink_mod

SHIPPED = uplink_mod.DIRECT_MAX


def summary(name: str, ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    out = {"p50": statistics.median(s), "p90": pct(s, 90), "p99": pct(s, 99), "max": s[-1]}
    print(f"  {name:<22} n={len(s):<5} p50={out['p50']:7.2f} ms  p90={out['p90']:7.2f} ms  "
          f"p99={out['p99']:7.2f} ms  max={out['max']:7.2f} ms")
    return out


def run(args: argparse.Namespace, tmp: Path) -> int:
    load_before = loadavg()
    ms: dict[str, list[float]] = {"direct": [], "pump": []}
    lost = {"direct": 0, "pump": 0}
    with station_under_test(tmp, audio=not args.no_audio) as (station, _fsync, township, _p):
        pin = station.pin_factory.pin(station.config.pins.panic)
        seen: set[str] = set()
        gap = args.gap_ms / 1000.0
        for i in range(args.warmup + args.rounds):
            order = ("direct", "pump") if i % 2 == 0 else ("pump", "direct")
            for mode in order:
                uplink_mod.DIRECT_MAX = SHIPPED if mode == "direct" else 0
                t0 = time.perf_counter()
                pin.drive_low()
                got = wait_for(township, STATION, seen, args.timeout)
                pin.drive_high()
                if got is None:
                    lost[mode] += 1
                elif i >= args.warmup:
                    ms[mode].append((got[0] - t0) * 1000.0)
                time.sleep(gap)
        uplink_mod.DIRECT_MAX = SHIPPED
    print("direct send: panic press -> township, the outbox writer's direct send on and off, "
          "interleaved press by press")
    print(machine_line(load_before))
    print(f"rounds={args.rounds} (+{args.warmup} warm-up), gap={args.gap_ms} ms, "
          f"audio={'off' if args.no_audio else 'on'}")
    if not ms["direct"] or not ms["pump"]:
        print("FAIL: nothing measured")
        return 1
    d = summary(f"direct (DIRECT_MAX={SHIPPED})", ms["direct"])
    p = summary("pump only (DIRECT_MAX=0)", ms["pump"])
    print(f"  ratio direct/pump: p50 x{d['p50'] / p['p50']:.2f}, p90 x{d['p90'] / p['p90']:.2f}, "
          f"p99 x{d['p99'] / p['p99']:.2f}")
    if lost["direct"] or lost["pump"]:
        print(f"  LOST (not received within {args.timeout} s): {lost}")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--no-audio", action="store_true")
    add_tmp_args(parser)
    args = parser.parse_args()
    return run_in_tmp(args, "pingan-bench-direct-", run)


if __name__ == "__main__":
    sys.exit(main())
