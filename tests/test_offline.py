"""Broker outages: everything produced while it is down arrives once, alarms first."""

from __future__ import annotations

import random

from conftest import schema, wait_until

from edge.contract.events import Priority


def produce(station, count: int, alarm_every: int = 10, seed: int = 7) -> list:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    futures = []
    for i in range(count):
        if i % alarm_every == 0:
            futures.append(station.alarm.raise_alarm("simulator", 0.0))
        elif rng.random() < 0.5:
            futures.append(station.buttons.broadcast_pressed(0.0))
        else:
            futures.append(station.recorder.record(status_event(station, i)))
    return [f.result(30) for f in futures]


def status_event(station, i: int):  # type: ignore[no-untyped-def]
    from edge.contract.events import Status, StatusPayload, stamp, text

    return Status(station="v001", township="t01",
                  payload=StatusPayload(code="test.tick", level="info",
                                        message=text(f"第{i}条", f"tick {i}"), detail={"i": i}),
                  **stamp())


def test_thousand_events_during_outage_all_arrive_once_alarms_first(own_broker, start_station,
                                                                    township_factory):
    township = township_factory(own_broker.port, session="township-centre")
    station = start_station(own_broker.port, uplink={"inflight": 20})
    wait_until(lambda: station.uplink.connected)

    own_broker.stop()
    wait_until(lambda: not station.uplink.connected, what="station sees the outage")
    stored = produce(station, 1000)
    assert station.outbox.pending_count() == 1000
    assert [s.seq for s in stored] == list(range(1, 1001))

    own_broker.start()  # persistence on: the township's session and queue survive
    wait_until(lambda: len(township.unique_events()) >= 1000, 60, "all 1000 events")
    wait_until(lambda: station.outbox.pending_count() == 0, 10, "outbox drained")

    events = township.unique_events()
    assert sorted(e["id"] for e in events) == sorted(s.id for s in stored)
    assert len(events) == 1000
    validator = schema("event")
    for e in events[:50]:
        validator.validate(e)
    alarms = [e for e in events if e["priority"] == Priority.ALARM]
    assert len(alarms) == 100
    first_other = next(i for i, e in enumerate(events) if e["priority"] != Priority.ALARM)
    assert all(e["priority"] == Priority.ALARM for e in events[:first_other])
    assert first_other == 100, "every alarm before any other event"
    for prio in Priority:
        seqs = [e["seq"] for e in events if e["priority"] == prio]
        assert seqs == sorted(seqs), f"order kept within priority {prio.name}"
    # After the drain the station is healthy again and says so on the state topic.
    wait_until(lambda: not station.health.problems(), 5, "problems cleared")


def test_events_survive_station_restart_while_offline(own_broker, tmp_path, township_factory):
    from conftest import make_config

    from edge.station import Station

    config = make_config(tmp_path / "station", own_broker.port)
    own_broker.stop()
    station = Station(config)
    station.start()
    stored = produce(station, 50, alarm_every=5)
    station.stop()

    own_broker.start()
    township = township_factory(own_broker.port)
    station = Station(config)
    assert station.outbox.pending_count() == 50
    station.start()
    try:
        wait_until(lambda: len(township.unique_events()) >= 50, 20)
        assert sorted(e["id"] for e in township.unique_events()) == sorted(s.id for s in stored)
        # The next event continues the sequence: it survived the restart.
        assert station.buttons.broadcast_pressed(0.0).result(5).seq == 51
    finally:
        station.stop()


def test_broker_killed_and_back_resends_everything_unacknowledged(own_broker, start_station,
                                                                   township_factory):
    """SIGKILL the broker (a crash: no final save) while the station streams events, and keep
    producing during the outage. Every event the broker had not acknowledged when it died
    reaches the township after the restart. (What the broker acknowledged and then lost in
    its own crash is the broker's durability: see broker_config/.)"""
    township = township_factory(own_broker.port, session="township-centre")
    own_broker.save()  # the township's session and subscription, as a running broker would have
    station = start_station(own_broker.port, uplink={"inflight": 50})
    wait_until(lambda: station.uplink.connected)
    futures = [station.buttons.broadcast_pressed(0.0) for _ in range(300)]
    own_broker.stop(kill=True)
    wait_until(lambda: not station.uplink.connected, what="station sees the crash")
    first = [f.result(10) for f in futures]
    station.outbox.flush()
    unacked = {p.id for p in station.outbox.pending({}, 10_000)}
    second = produce(station, 300, alarm_every=30, seed=2)
    own_broker.start()
    wait_until(lambda: station.outbox.pending_count() == 0, 30, "outbox drained")
    expected = unacked | {s.id for s in second}
    wait_until(lambda: expected <= {e["id"] for e in township.unique_events()}, 30,
               "every unacknowledged event at the township")
    assert len(first) == 300 and len(expected) >= 300


def test_long_outage_fills_outbox_evicts_telemetry_keeps_alarms_and_says_so(
        own_broker, start_station, township_factory):
    township = township_factory(own_broker.port, session="township-centre")
    station = start_station(own_broker.port, outbox={"max_bytes": 16384})
    wait_until(lambda: station.uplink.connected)
    own_broker.stop()
    wait_until(lambda: not station.uplink.connected)
    alarms = [station.alarm.raise_alarm("simulator", 0.0).result(5) for _ in range(10)]
    for i in range(200):
        station.recorder.record(status_event(station, i))
    station.outbox.flush()
    kept = station.outbox.pending({}, 10_000)
    own_broker.start()
    wait_until(lambda: {k.id for k in kept} <= {e["id"] for e in township.unique_events()}, 20,
               "everything kept reaches the township")
    received = township.unique_events()
    assert {a.id for a in alarms} <= {e["id"] for e in received}
    statuses = [e for e in received if e["type"] == "status"]
    assert 0 < len(statuses) < 200, "some telemetry evicted"
    assert [e["payload"]["detail"]["i"] for e in statuses] == list(
        range(200 - len(statuses), 200)), "the oldest went, the newest were kept"
    problem = wait_until(lambda: [p for s in township.on("/v001/state")
                                  for p in s.get("problems", []) if p["code"] == "outbox_evicted"])
    assert "all alarms kept" in problem[-1]["message"]["en"]
