"""A broadcast to 1,000 stations: the time until every result is in, per station, and the
centre's CPU (issue 23's benchmark).

What it runs
    The township broker as shipped (TLS, the ACL), on a free port. `--stations` light
    stations (sim/pingan_sim/fleet.py), each with its own certificate (cached, as
    bench/county.py), which answer the township's commands as a unit does: the unit's
    parser, a `cmd.result` with the unit's detail, then `audio.playback` started and,
    `--play-s` seconds later (they render nothing), finished. The township console as in
    production: `pingan-centre serve` on SQLite (or --database postgres), its ingest on the
    loopback listener with a centre account.

What happens
    An officer sends a broadcast (a chime) through the console's own form
    (POST /broadcasts/send): to `--baseline` chosen stations, then to all, `--rounds`
    times each, alternately, on the same running system. Each round waits until the
    console has every station's `finished` event.

What it measures, from the moment the officer presses send
    send:       the POST's answer (the console recorded one Command per station and
                handed the publishes to its MQTT client);
    accepted:   per station, its `cmd.result` in the console's database (Command.result_at);
    played:     per station, its `finished` in the console's database (Event.received_at):
                the station's result, complete; it includes the `--play-s` the station
                sounds it for;
    all in:     the last station's `played`;
    CPU:        of the centre, the broker and this process (the stations), from /proc,
                over the round (until all in): seconds, and % of one core;
    results:    GET /broadcast/results (the results page's data), once all are in.
    Medians over rounds; the ratio of all to the baseline in the same run.

Measured (2026-12-06, 2 shared vCPUs, load average 7-10 from other work, SQLite, 3 rounds,
`--play-s 2`; medians)
    100 stations:   POST answered 0.06 s; all in 2.16 s; per station accepted p50 0.23 s,
                    p99 0.47 s, played p50 2.12 s, p99 2.16 s; centre 0.41 s of CPU
                    (4.1 ms a station); results page 49 ms.
    1,000 stations: POST answered 0.45 s; all in 8.24 s; per station accepted p50 4.27 s,
                    p99 6.80 s, played p50 7.60 s, p99 8.24 s; centre 3.68 s of CPU (45 % of
                    one core until all in, 3.7 ms a station), broker 0.11 s, the light
                    stations 1.38 s; results page 403 ms.
    Ratio 1,000 / 100: all in 3.8x (38x less the 2 s of sounding), played p50 3.6x, centre
    CPU 9.0x (linear), results page 8.2x.
    Before the console published a broadcast's Commands in one batch after its commit and
    marked them sent in one UPDATE (it published and updated each in its own on_commit,
    taking SQLite's write lock once a station while the results came in), the POST for
    1,000 took 3.51 s (14.7x the 100's) and all in was 8.21 s: the same, since what
    limits it is the console's single ingest worker (3 events a station: a cmd.result,
    whose handler updates its Command, and 2 audio.playback), sharing 2 loaded cores
    with the broker and the stations.

Run
    .venv/bin/python bench/broadcast.py                      # 1,000 stations vs 100
    .venv/bin/python bench/broadcast.py --stations 200 --baseline 20 --rounds 1   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from centre_common import PASSWORD, Centre, Db
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp
from county import Proc, cached_township, names, wait

from pingan_centre.broker import provision
from pingan_sim.fleet import Fleet, identities
from pingan_sim.township import CENTRE, TOWNSHIP, TownshipBroker


class Results:
    """Each station's results for one broadcast, read from the console's database."""

    def __init__(self, db: Db) -> None:
        self.db = db
        self._conn: sqlite3.Connection | None = None
        if db.kind == "sqlite":
            self._conn = sqlite3.connect(f"file:{db.url.removeprefix('sqlite:///')}?mode=ro",
                                         uri=True, timeout=30)

    def _rows(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._conn is not None:
            return self._conn.execute(query, args).fetchall()
        import psycopg
        with psycopg.connect(self.db.url) as conn:
            return conn.execute(query.replace("?", "%s"), args).fetchall()

    @staticmethod
    def _t(value: Any) -> float:
        if isinstance(value, datetime):
            return value.timestamp()
        return datetime.fromisoformat(str(value)).replace(tzinfo=UTC).timestamp()

    def accepted(self, bid: str) -> dict[str, float]:
        return {str(s): self._t(t) for s, t in self._rows(
            "SELECT station_id, result_at FROM console_command WHERE id LIKE ? "
            "AND result_at IS NOT NULL", (f"bc:{bid}:%",))}

    def played(self, bid: str) -> dict[str, float]:
        if self.db.kind == "sqlite":
            query = ("SELECT station_id, received_at FROM console_event WHERE type = "
                     "'audio.playback' AND json_extract(payload, '$.phase') = 'finished' "
                     "AND json_extract(payload, '$.cmd_id') LIKE ?")
        else:
            query = ("SELECT station_id, received_at FROM console_event WHERE type = "
                     "'audio.playback' AND payload->>'phase' = 'finished' "
                     "AND payload->>'cmd_id' LIKE ?")
        return {str(s): self._t(t) for s, t in self._rows(query, (f"bc:{bid}:%",))}


@dataclass
class Round:
    stations: int
    send_s: float = 0.0
    all_in_s: float = float("nan")
    accepted: list[float] = field(default_factory=list)  # per station, s from send
    played: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    results_page_s: float = 0.0
    summary: str = ""


def broadcast(args: argparse.Namespace, http: requests.Session, url: str, results: Results,
              procs: list[Proc], chosen: list[str], everyone: bool) -> Round:
    r = Round(len(chosen))
    form: dict[str, Any] = {"content": "tone", "tone": "chime", "repeat": "1",
                            "priority": "normal", "target": "all" if everyone else "stations",
                            "csrfmiddlewaretoken": http.cookies["csrftoken"]}
    if not everyone:
        form["stations"] = chosen
    cpu0 = {p.name: p.cpu_s() for p in procs}
    t0 = time.time()
    answer = http.post(f"{url}/broadcasts/send", data=form, timeout=600,
                       headers={"Accept": "application/json", "Referer": url})
    answer.raise_for_status()
    r.send_s = time.time() - t0
    bid = answer.json()["id"]
    deadline = time.monotonic() + args.timeout
    played: dict[str, float] = {}
    while time.monotonic() < deadline:
        played = results.played(bid)
        if len(played) >= len(chosen):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"timed out: {len(played)} of {len(chosen)} stations played")
    r.cpu_s = {p.name: p.cpu_s() - cpu0[p.name] for p in procs}
    accepted = results.accepted(bid)
    r.accepted = sorted(t - t0 for t in accepted.values())
    r.played = sorted(t - t0 for t in played.values())
    r.all_in_s = max(r.played)
    t = time.perf_counter()
    page = http.get(f"{url}/broadcast/results", params={"id": bid}, timeout=600,
                    headers={"Accept-Language": "en"})
    r.results_page_s = time.perf_counter() - t
    page.raise_for_status()
    r.summary = page.json()["summary"]
    return r


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cache = Path(args.cache) if args.cache else Path(tempfile.gettempdir()) / "pingan-county"
    town, units, made_s = cached_township(cache, args.stations)
    idents = identities(town, names(args.stations), units)
    broker = TownshipBroker(tmp / "broker", town=town)
    password = provision.add_account(town, CENTRE)
    broker.start()
    db = Db(args.database, tmp)
    centre = Centre(tmp, db, broker.plain_port, TOWNSHIP, users={"officer": "duty_officer"},
                    account=(CENTRE, password))
    fleet = Fleet.of(idents, "127.0.0.1", broker.tls_port, workers=args.workers,
                     seed=args.seed, play_s=args.play_s)
    rounds: list[Round] = []
    try:
        centre.start("serve")
        assert centre.proc is not None and broker.mosquitto.pid is not None
        procs = [Proc("centre", centre.proc.pid), Proc("broker", broker.mosquitto.pid),
                 Proc("stations", os.getpid())]
        fleet.start()
        t = time.monotonic()
        for st in fleet.stations:
            fleet.on(st, 0.0)
        wait(lambda: fleet.online() == len(fleet.stations), args.timeout,
             "every station's first connection")
        print(f"  {len(fleet.stations)} stations connected in {time.monotonic() - t:.1f} s "
              f"(certificates: {made_s:.1f} s to issue what the cache lacked)", flush=True)
        wait(lambda: db.count("console_station") >= len(fleet.stations), args.timeout,
             "the console to list every station")
        time.sleep(args.settle)  # the states and first connections' work done
        http = requests.Session()
        http.get(f"{centre.url}/login/", timeout=30)
        http.post(f"{centre.url}/login/", timeout=30, data={
            "username": "officer", "password": PASSWORD,
            "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        results = Results(db)
        everyone = names(args.stations)
        for n in range(args.rounds):
            for size in (args.baseline, args.stations):
                r = broadcast(args, http, centre.url, results, procs, everyone[:size],
                              size == args.stations)
                rounds.append(r)
                print(f"  round {n + 1}, {size} stations: sent in {r.send_s:.2f} s, all in "
                      f"{r.all_in_s:.2f} s; played p50 {statistics.median(r.played):.2f} s, "
                      f"p99 {pct(r.played, 99):.2f} s; centre CPU {r.cpu_s['centre']:.2f} s; "
                      f"\"{r.summary}\"", flush=True)
        errors = fleet.errors()
    finally:
        for stop in (fleet.stop, centre.stop, broker.stop, db.close):
            try:
                stop()
            except Exception as exc:
                print(f"broadcast: stopping failed: {exc!r}", file=sys.stderr)
    med = statistics.median
    print(f"broadcast: a chime to {args.baseline} chosen stations (baseline) and to all "
          f"{args.stations}, {args.rounds} round(s) each, alternately, on one running "
          f"system; light stations sound it for {args.play_s:g} s; database "
          f"{args.database}; {args.workers} station threads")
    by_size: dict[int, dict[str, float]] = {}
    for size in (args.baseline, args.stations):
        rs = [r for r in rounds if r.stations == size]
        fig = {
            "send": med(r.send_s for r in rs), "all_in": med(r.all_in_s for r in rs),
            "acc50": med(med(r.accepted) for r in rs), "acc99": med(pct(r.accepted, 99)
                                                                  for r in rs),
            "p50": med(med(r.played) for r in rs), "p99": med(pct(r.played, 99) for r in rs),
            "page": med(r.results_page_s for r in rs),
            **{f"cpu_{p}": med(r.cpu_s.get(p, float("nan")) for r in rs)
               for p in ("centre", "broker", "stations")}}
        by_size[size] = fig
        wall = fig["all_in"]
        print(f"  {size:5d} stations: send (POST answered) {fig['send']:.2f} s; all in "
              f"{wall:.2f} s (of which {args.play_s:g} s is the stations sounding it)")
        print(f"        per station: accepted p50 {fig['acc50']:.2f} s, p99 "
              f"{fig['acc99']:.2f} s; played p50 {fig['p50']:.2f} s, p99 {fig['p99']:.2f} s")
        print(f"        CPU until all in: centre {fig['cpu_centre']:.2f} s "
              f"({100 * fig['cpu_centre'] / wall:.0f} % of one core; "
              f"{1000 * fig['cpu_centre'] / size:.1f} ms a station), broker "
              f"{fig['cpu_broker']:.2f} s, stations (this process) {fig['cpu_stations']:.2f} s;"
              f" results page {fig['page'] * 1000:.0f} ms")
    base, full = by_size[args.baseline], by_size[args.stations]
    k = args.stations / args.baseline
    print(f"  ratio {args.stations} / {args.baseline} stations ({k:g}x the stations): all in "
          f"{full['all_in'] / base['all_in']:.2f}x (less the sounding: "
          f"{(full['all_in'] - args.play_s) / max(base['all_in'] - args.play_s, 1e-6):.2f}x), "
          f"send {full['send'] / base['send']:.1f}x, played p50 "
          f"{full['p50'] / base['p50']:.2f}x, p99 {full['p99'] / base['p99']:.2f}x, "
          f"centre CPU {full['cpu_centre'] / base['cpu_centre']:.1f}x, results page "
          f"{full['page'] / base['page']:.1f}x")
    if errors:
        print(f"  station worker errors: {errors[:5]}")
    print(machine_line(load))
    missing = any(not r.summary or len(r.played) < r.stations for r in rounds)
    return 1 if errors or missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=100,
                        help="stations chosen for the baseline broadcast")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--play-s", type=float, default=2.0,
                        help="how long each light station sounds the chime")
    parser.add_argument("--workers", type=int, default=16, help="threads for the stations")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds to wait after every station is listed")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", default=None, help="certificate cache (default: "
                        "<temp>/pingan-county, shared with bench/county.py)")
    add_tmp_args(parser)
    args = parser.parse_args()
    if not 0 < args.baseline < args.stations:
        parser.error("--baseline must be between 0 and --stations")
    return run_in_tmp(args, "pingan-broadcast-", run)


if __name__ == "__main__":
    sys.exit(main())
