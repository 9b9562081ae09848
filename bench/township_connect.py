"""Township reconnect storm: how fast the shipped broker admits stations after an outage.

What it measures
    The township broker as shipped (broker_config/mosquitto.conf and acl, ports and paths
    changed as in the tests), identities from the centre's CA (EC P-256 certificates).
    `--stations` clients connect at once, `--workers` at a time, each until its CONNACK:

    tls:      the station listener: TLS 1.2+ handshake with a client certificate checked
              against the township CA and CRL, CN → username → client id, MQTT v5.
    baseline: the same clients on a plain anonymous mosquitto (no TLS, no password):
              what the broker costs without the station listener's security. (The
              centre listener is no baseline any more: its client id is the account
              name, one connection per account, and each login costs the 100,000
              PBKDF2 rounds of the centre's password hash.)

    Rounds alternate tls / baseline so machine noise hits both. Per connection: time from
    socket open to CONNACK (median, p99); per round: time until every client is in.
    Medians over `--rounds`, never means.

Run
    .venv/bin/python bench/township_connect.py                # 200 stations, 3 rounds
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from common import add_tmp_args, loadavg, machine_line, pct, run_in_tmp
from paho.mqtt.enums import CallbackAPIVersion

from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_sim.localbroker import Mosquitto
from pingan_sim.township import TownshipBroker


def connect_once(port: int, client_id: str, tls: tuple[Path, Path, Path] | None) -> float:
    done = threading.Event()
    ok: list[bool] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        ok.append(not reason.is_failure)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    if tls:
        client.tls_set(ca_certs=str(tls[0]), certfile=str(tls[1]), keyfile=str(tls[2]),
                       cert_reqs=ssl.CERT_REQUIRED)
    start = time.perf_counter()
    client.connect("127.0.0.1", port, keepalive=30)
    while not done.is_set():
        client.loop(timeout=0.01)
    took = time.perf_counter() - start
    client.disconnect()
    if not ok[0]:
        raise RuntimeError(f"{client_id} refused")
    return took


def storm(n: int, workers: int, job: Any) -> tuple[float, list[float]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        each = list(pool.map(job, range(n)))
    return time.perf_counter() - start, each


def run(args: argparse.Namespace, tmp: Path) -> int:
    load = loadavg()
    town = TownshipBroker(tmp / "township")
    units = []
    made = time.perf_counter()
    for i in range(args.stations):
        station = f"v{i:04d}"
        install_bundle(provision.add_station(town.town, station, "127.0.0.1"),
                                 tmp / "units" / station)
        d = tmp / "units" / station
        units.append((station, (d / "ca.crt", d / "station.crt", d / "station.key")))
    issue_s = (time.perf_counter() - made) / args.stations
    town.start()
    plain = Mosquitto(tmp / "plain", persistence=False).start()
    figures: dict[str, list[tuple[float, list[float]]]] = {"tls": [], "baseline": []}
    try:
        for _ in range(args.rounds):
            figures["tls"].append(storm(args.stations, args.workers, lambda i: connect_once(
                town.tls_port, units[i][0], units[i][1])))
            figures["baseline"].append(storm(args.stations, args.workers, lambda i: connect_once(
                plain.port, units[i][0], None)))
    finally:
        plain.stop()
        town.stop()
    print(f"township_connect: {args.stations} stations, {args.workers} at a time, "
          f"{args.rounds} rounds; issuing a bundle took {issue_s * 1000:.1f} ms each")
    med: dict[str, float] = {}
    for name, rounds in figures.items():
        totals = [t for t, _ in rounds]
        each = [x for _, e in rounds for x in e]
        med[name] = statistics.median(totals)
        print(f"  {name:8s} all in: median {med[name]:.2f} s "
              f"({args.stations / med[name]:.0f} connections/s); per connection "
              f"p50 {statistics.median(each) * 1000:.1f} ms, p99 {pct(each, 99) * 1000:.1f} ms")
    print(f"  ratio tls/baseline (all in): {med['tls'] / med['baseline']:.2f}")
    print(machine_line(load))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    add_tmp_args(parser)
    args = parser.parse_args()
    return run_in_tmp(args, "pingan-township-", run)


if __name__ == "__main__":
    sys.exit(main())
