"""Centre ingest rate: events/s stored by the console on SQLite and PostgreSQL, against
bare paho receiving the same stream in the same run.

What it measures
    A private Mosquitto on a free port. A publisher (paho, MQTT v5, QoS 1) sends `--events`
    valid events (`button.broadcast`, 1 in 100 an `alarm.panic`) from `--stations`
    simulated stations as fast as the broker takes them.
    bare paho:  a subscriber (same subscription shape: shared, QoS 1, persistent session)
                that only counts; from the first publish to the last message received.
    centre:     a `pingan-centre ingest` process (validation against the schemas,
                de-duplication, alarms, one transaction per batch, PUBACK after commit);
                from the first publish to the moment the database holds every event
                (polled every 20 ms).
    `--rounds` rounds, interleaving the three; medians reported, with the ratio to paho.

Run
    python3 bench/centre_ingest.py                 # 5,000 events x 3 rounds
    python3 bench/centre_ingest.py --events 20000 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from centre_common import Centre, Db, dumps, event, pg_available
from common import loadavg, machine_line
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pingan_sim.localbroker import Mosquitto


def publish_all(port: int, township: str, n: int, stations: int) -> float:
    """Publish n events; return the perf_counter at the first publish."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    bodies = []
    for i in range(n):
        st = f"b{i % stations:04d}"
        kind = "alarm.panic" if i % 100 == 99 else "button.broadcast"
        bodies.append((f"pingan/v1/{township}/{st}/events",
                       dumps(event(township, st, i // stations + 1, kind))))
    start = time.perf_counter()
    infos = [client.publish(topic, body, qos=1) for topic, body in bodies]
    for info in infos:
        info.wait_for_publish(60)
    client.loop_stop()
    client.disconnect()
    return start


def bare_paho(port: int, n: int, stations: int) -> float:
    township = f"bp{uuid.uuid4().hex[:6]}"
    got = 0
    done = threading.Event()
    end = [0.0]

    def on_message(*_: object) -> None:
        nonlocal got
        got += 1
        if got == n:
            end[0] = time.perf_counter()
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                      client_id=f"bare-{township}")
    sub.on_message = on_message
    ready = threading.Event()
    sub.on_subscribe = lambda *_: ready.set()
    sub.on_connect = lambda c, *_: c.subscribe(
        f"$share/centre/pingan/v1/{township}/+/events", qos=1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    sub.connect("127.0.0.1", port, clean_start=False, properties=props)
    sub.loop_start()
    ready.wait(10)
    start = publish_all(port, township, n, stations)
    done.wait(120)
    sub.loop_stop()
    sub.disconnect()
    return n / (end[0] - start)


def centre(tmp: Path, kind: str, port: int, n: int, stations: int) -> float:
    township = f"c{uuid.uuid4().hex[:6]}"
    db = Db(kind, tmp)
    c = Centre(tmp, db, port, township)
    try:
        c.start("ingest")
        start = publish_all(port, township, n, stations)
        deadline = time.monotonic() + 600
        while db.count("console_event") < n:
            if time.monotonic() > deadline:
                raise RuntimeError("centre did not store every event")
            time.sleep(0.02)
        end = time.perf_counter()
        return n / (end - start)
    finally:
        c.stop()
        db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = loadavg()
    kinds = ["sqlite", "postgres"] if pg_available() else ["sqlite"]
    rates: dict[str, list[float]] = {"bare paho": [], **{k: [] for k in kinds}}
    with tempfile.TemporaryDirectory(prefix="centre-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        broker = Mosquitto(tmp / "broker", persistence=False).start()
        try:
            for r in range(args.rounds):
                rates["bare paho"].append(bare_paho(broker.port, args.events, args.stations))
                for kind in kinds:
                    rates[kind].append(centre(tmp, kind, broker.port, args.events,
                                              args.stations))
                print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s"
                                                    for k, v in rates.items()),
                      file=sys.stderr)
        finally:
            broker.stop()
    base = statistics.median(rates["bare paho"])
    print(f"ingest of {args.events:,} events from {args.stations} stations, "
          f"median of {args.rounds} rounds (events/s, first publish -> last stored):")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"  {name:10s} {med:9,.0f} /s   ({med / base:.2f} x bare paho)")
    if "postgres" not in kinds:
        print("  postgres   skipped: nothing answers on 127.0.0.1:5432")
    print(machine_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
