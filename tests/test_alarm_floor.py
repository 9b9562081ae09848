"""The alarm's short way: the outbox writer hands a lone alarm straight to paho, and staff
feedback (LED, siren, log) follows the store instead of competing with it.

The short way must never cost an event or its order: mixed with bursts, the pump and an
outage, everything still arrives, in order within each priority."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from typing import Any

from conftest import wait_until
from test_offline import status_event

from edge.contract.events import Priority
from edge.unit.indicator import Mode


def publishers(station: Any) -> list[str]:
    """Record the name of each thread that hands an event to paho."""
    names: list[str] = []
    client = station.uplink._client
    publish = client.publish

    def recorded(topic: str, *a: Any, **kw: Any) -> Any:
        if topic.endswith("/events"):
            names.append(threading.current_thread().name)
        return publish(topic, *a, **kw)

    client.publish = recorded
    return names


def test_a_lone_alarm_goes_from_the_writer_to_paho(broker, start_station, township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: township.on("/v001/state"), what="station online")
    names = publishers(station)
    for n in range(5):
        station.alarm.raise_alarm("button", 0.0).result(5)
        wait_until(lambda n=n: len(township.events()) == n + 1, what=f"alarm {n + 1}")
        time.sleep(0.1)  # its PUBACK and mark: the next one finds the uplink idle
    assert names.count("outbox-writer") >= 4, names  # the first may meet the state publish
    assert [e["seq"] for e in township.events()] == [1, 2, 3, 4, 5]


def test_short_way_and_pump_together_lose_and_reorder_nothing(own_broker, start_station,
                                                               township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(own_broker.port, session="floor-centre")
    station = start_station(own_broker.port, uplink={"inflight": 8})
    wait_until(lambda: station.uplink.connected)
    names = publishers(station)
    futures: list[Any] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 6.0

    def produce(seed: int) -> None:  # two producers: commits land while the pump works
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            roll = rng.random()
            if roll < 0.3:
                made = [station.alarm.raise_alarm("simulator", 0.0)]
            elif roll < 0.4:  # a burst: more rows than the short way takes
                made = [station.recorder.record(status_event(station, i)) for i in range(30)]
            else:
                made = [station.buttons.broadcast_pressed(0.0)]
            with lock:
                futures.extend(made)
            time.sleep(rng.choice([0.0, 0.0005, 0.002, 0.02]))

    producers = [threading.Thread(target=produce, args=(seed,)) for seed in (13, 14)]
    for t in producers:
        t.start()
    time.sleep(2.0)
    own_broker.stop()  # mid-run: rows in flight, the cursor ahead of paho
    time.sleep(0.5)
    own_broker.start()
    for t in producers:
        t.join()
    stored = [f.result(30) for f in futures]
    wait_until(lambda: station.outbox.pending_count() == 0, 60, "outbox drained")
    wait_until(lambda: len(township.unique_events()) >= len(stored), 30, "all at the township")
    events = township.unique_events()
    assert sorted(e["seq"] for e in events) == sorted(s.seq for s in stored)
    for prio in Priority:
        seqs = [e["seq"] for e in events if e["priority"] == prio]
        assert seqs == sorted(seqs), f"order kept within priority {prio.name}"
    assert "outbox-writer" in names and "uplink-pump" in names, set(names)


def test_staff_feedback_follows_the_store_and_never_waits_for_a_stuck_one(
        broker, start_station, township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    # Another writer holds the database: the alarm's commit waits (busy_timeout).
    blocker = sqlite3.connect(station.outbox.path, timeout=1)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        future = station.alarm.raise_alarm("button", 0.0)
        # Staff see the LED and hear the siren although the store has not answered.
        wait_until(lambda: station.alarm.indicator.mode is Mode.PENDING, 2, "LED despite the store")
        assert not future.done()
    finally:
        blocker.rollback()
        blocker.close()
    stored = future.result(15)
    wait_until(lambda: [e["id"] for e in township.events()] == [stored.id], what="the alarm")
    wait_until(lambda: station.alarm.indicator.mode is Mode.DELIVERED, 5, "LED steady")


def test_a_failing_short_way_leaves_the_alarm_to_the_pump(broker, start_station,
                                                          township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: township.on("/v001/state"), what="station online")
    warm = station.alarm.raise_alarm("button", 0.0).result(5)  # the uplink caught up after it
    wait_until(lambda: [e["id"] for e in township.events()] == [warm.id], what="warm-up")
    time.sleep(0.2)
    client = station.uplink._client
    publish = client.publish
    failed: list[str] = []

    def once_broken(topic: str, *a: Any, **kw: Any) -> Any:
        if topic.endswith("/events") and not failed:
            failed.append(threading.current_thread().name)
            raise RuntimeError("socket trouble on the short way")
        return publish(topic, *a, **kw)

    client.publish = once_broken
    first = station.alarm.raise_alarm("button", 0.0).result(5)
    time.sleep(0.2)
    second = station.alarm.raise_alarm("button", 0.0).result(5)
    wait_until(lambda: {e["id"] for e in township.events()} >= {first.id, second.id}, 15,
               "both alarms, the first by the pump")
    assert failed == ["outbox-writer"]
    assert [e["seq"] for e in township.unique_events()] == [warm.seq, first.seq, second.seq]


def test_the_pump_outlives_a_failing_publish(broker, start_station, township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    station = start_station(broker.port)
    wait_until(lambda: station.uplink.connected)
    client = station.uplink._client
    publish = client.publish
    failures = [0]

    def broken_twice(topic: str, *a: Any, **kw: Any) -> Any:
        if topic.endswith("/events") and failures[0] < 2:
            failures[0] += 1
            raise RuntimeError("socket trouble")
        return publish(topic, *a, **kw)

    client.publish = broken_twice
    stored = [f.result(5) for f in [station.recorder.record(status_event(station, i))
                                    for i in range(50)]]
    wait_until(lambda: len(township.unique_events()) == 50, 20, "all 50 despite the failures")
    assert failures[0] == 2 and station.uplink.alive
    assert [e["seq"] for e in township.unique_events()] == [s.seq for s in stored]
