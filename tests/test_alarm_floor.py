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


class Publishes:
    """The uplink's `before_publish` hook (handed to the Station): the name of each thread
    that hands an event to paho, and, when armed, socket trouble for the next `fail`."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.failed: list[str] = []
        self.fail = 0

    def __call__(self, topic: str) -> None:
        if not topic.endswith("/events"):
            return
        if self.fail > 0:
            self.fail -= 1
            self.failed.append(threading.current_thread().name)
            raise RuntimeError("socket trouble")
        self.names.append(threading.current_thread().name)


def test_a_lone_alarm_goes_from_the_writer_to_paho(broker, start_station, township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    hook = Publishes()
    station = start_station(broker.port, {"before_publish": hook})
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: township.on("/v001/state"), what="station online")
    hook.names.clear()
    names = hook.names
    for n in range(5):
        station.alarm.raise_alarm("button", 0.0).result(5)
        wait_until(lambda n=n: len(township.events()) == n + 1, what=f"alarm {n + 1}")
        time.sleep(0.1)  # its PUBACK and mark: the next one finds the uplink idle
    assert names.count("outbox-writer") >= 4, names  # the first may meet the state publish
    assert [e["seq"] for e in township.events()] == [1, 2, 3, 4, 5]


def test_short_way_and_pump_together_lose_and_reorder_nothing(own_broker, start_station,
                                                               township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(own_broker.port, session="floor-centre")
    hook = Publishes()
    station = start_station(own_broker.port, {"before_publish": hook}, uplink={"inflight": 8})
    wait_until(lambda: station.uplink.connected)
    names = hook.names
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
    # Another writer holds the database: the alarm's commit waits (busy_timeout). Through
    # the outbox's own VFS: its WAL index is in this process's memory.
    blocker = sqlite3.connect(f"{station.outbox.path.absolute().as_uri()}?vfs=unix-excl",
                              timeout=1, uri=True)
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
    hook = Publishes()
    station = start_station(broker.port, {"before_publish": hook})
    wait_until(lambda: station.uplink.connected)
    wait_until(lambda: township.on("/v001/state"), what="station online")
    warm = station.alarm.raise_alarm("button", 0.0).result(5)  # the uplink caught up after it
    wait_until(lambda: [e["id"] for e in township.events()] == [warm.id], what="warm-up")
    time.sleep(0.2)
    hook.fail = 1
    first = station.alarm.raise_alarm("button", 0.0).result(5)
    time.sleep(0.2)
    second = station.alarm.raise_alarm("button", 0.0).result(5)
    wait_until(lambda: {e["id"] for e in township.events()} >= {first.id, second.id}, 15,
               "both alarms, the first by the pump")
    assert hook.failed == ["outbox-writer"]
    assert [e["seq"] for e in township.unique_events()] == [warm.seq, first.seq, second.seq]


def test_the_pump_outlives_a_failing_publish(broker, start_station, township_factory):  # type: ignore[no-untyped-def]
    township = township_factory(broker.port)
    hook = Publishes()
    station = start_station(broker.port, {"before_publish": hook})
    wait_until(lambda: station.uplink.connected)
    hook.fail = 2
    stored = [f.result(5) for f in [station.recorder.record(status_event(station, i))
                                    for i in range(50)]]
    wait_until(lambda: len(township.unique_events()) == 50, 20, "all 50 despite the failures")
    assert len(hook.failed) == 2 and station.uplink.alive
    assert [e["seq"] for e in township.unique_events()] == [s.seq for s in stored]
