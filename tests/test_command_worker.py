"""Township commands run off paho's network thread (edge/link/dispatch.py): an alarm never
waits behind a slow command, a full command queue answers `busy` at once, and every
command id is acted on and answered once, rejected ones too."""

from __future__ import annotations

import json
import threading
from typing import Any

from conftest import wait_until

from edge.contract import commands
from edge.unit.indicator import Mode


def _results(township: Any, cmd_id: str) -> list[dict[str, Any]]:
    return [r["payload"] for r in township.on("/v001/cmd/result")
            if r["payload"]["cmd_id"] == cmd_id]


def _blocking_state_get(station: Any) -> tuple[threading.Event, threading.Event]:
    """Make state.get a deliberately slow command: it runs until the test releases it."""
    started, release = threading.Event(), threading.Event()

    def slow(_cmd: commands.StateGet) -> dict[str, Any]:
        started.set()
        assert release.wait(30), "the test never released the slow command"
        return {"slow": True}

    station.handlers.register(commands.StateGet, slow, replace=True)
    return started, release


def test_an_alarm_does_not_wait_behind_a_slow_command(broker, start_station,
                                                      township_factory):
    station = start_station(broker.port)
    township = township_factory(broker.port)
    wait_until(lambda: station.uplink.connected, what="station connected")
    started, release = _blocking_state_get(station)
    try:
        township.command("v001", {"cmd": "state.get", "id": "slow-1"})
        assert started.wait(10), "the slow command never started"
        # The slow command holds the command worker, and would hold the network thread
        # (and with it every PUBACK and publish) if it ran there: the alarm must still go.
        alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
        wait_until(lambda: alarm.id in {e["id"] for e in township.events()}, 5,
                   "the alarm at the township while a command is still running")
        wait_until(lambda: station.alarm.indicator.mode == Mode.DELIVERED, 5,
                   "the alarm's PUBACK handled (LED: delivered) while the command runs")
        assert not _results(township, "slow-1"), "the slow command had not finished yet"
    finally:
        release.set()
    wait_until(lambda: _results(township, "slow-1"), 5, "the slow command's answer")
    assert _results(township, "slow-1") == [
        {"cmd_id": "slow-1", "cmd": "state.get", "ok": True, "error": None,
         "detail": {"slow": True}}]


def test_a_full_command_queue_answers_busy_at_once(broker, start_station, township_factory):
    station = start_station(broker.port, uplink={"command_queue": 1})
    township = township_factory(broker.port)
    wait_until(lambda: station.uplink.connected, what="station connected")
    started, release = _blocking_state_get(station)
    try:
        township.command("v001", {"cmd": "state.get", "id": "q-running"})
        assert started.wait(10)
        township.command("v001", {"cmd": "state.get", "id": "q-waiting"})
        township.command("v001", {"cmd": "state.get", "id": "q-busy"})
        busy = wait_until(lambda: _results(township, "q-busy"), 5, "the busy answer")
        assert busy[0]["ok"] is False and busy[0]["error"]["code"] == "busy"
        assert "new id" in busy[0]["error"]["message"]["en"]
        assert not _results(township, "q-waiting")
    finally:
        release.set()
    for cmd_id in ("q-running", "q-waiting"):
        assert wait_until(lambda c=cmd_id: _results(township, c), 5)[0]["ok"] is True
    # Answered once: the same id again is not run, nor answered, a second time.
    township.command("v001", {"cmd": "state.get", "id": "q-busy"})
    township.command("v001", {"cmd": "state.get", "id": "q-after"})
    wait_until(lambda: _results(township, "q-after"), 5)
    assert len(_results(township, "q-busy")) == 1


def test_every_command_id_is_answered_once_even_when_rejected(broker, start_station,
                                                              township_factory):
    station = start_station(broker.port)
    township = township_factory(broker.port)
    wait_until(lambda: station.uplink.connected, what="station connected")
    bad = {"cmd": "alarm.ack", "id": "r-1", "event_id": "no-such-alarm"}
    invalid = b'{"cmd": "state.get", "id": "r-2", "surprise": 1}'
    for _ in range(3):
        township.command("v001", bad)  # valid shape, rejected when run
        township.command("v001", invalid)  # rejected on arrival
    township.command("v001", {"cmd": "state.get", "id": "r-1"})  # same id, now valid
    township.command("v001", {"cmd": "state.get", "id": "r-end"})
    wait_until(lambda: _results(township, "r-end"), 5, "the last command's answer")
    assert [r["error"]["code"] for r in _results(township, "r-1")] == ["unknown_event"]
    assert [r["error"]["code"] for r in _results(township, "r-2")] == ["invalid_command"]


def test_duplicate_keys_and_a_broadcast_that_could_never_play_are_rejected(
        broker, start_station, township_factory):
    station = start_station(broker.port, audio={"enabled": True, "output": "null"})
    township = township_factory(broker.port)
    wait_until(lambda: station.uplink.connected, what="station connected")
    township.command("v001", b'{"cmd": "volume.set", "id": "k-1", "volume": 0.2, '
                             b'"volume": 0.9}')
    township.command("v001", json.dumps({
        "cmd": "broadcast.play", "id": "k-2", "tone": "chime",
        "not_before": "2030-01-01T08:00:10+08:00",
        "expires": "2030-01-01T08:00:00+08:00"}).encode())
    for cmd_id in ("k-1", "k-2"):
        answer = wait_until(lambda c=cmd_id: _results(township, c), 5)[0]
        assert answer["ok"] is False and answer["error"]["code"] == "invalid_command", answer
    assert "twice" in _results(township, "k-1")[0]["error"]["message"]["en"]
    assert "never play" in _results(township, "k-2")[0]["error"]["message"]["en"]
    assert station.loudspeaker is not None and station.loudspeaker.volume != 0.9


def test_the_retained_state_is_published_once_per_connect(own_broker, start_station,
                                                          township_factory):
    # A persistent session: what the station publishes while the township reconnects
    # is kept for it.
    township = township_factory(own_broker.port, session="township-state")
    station = start_station(own_broker.port)
    for connect in (1, 2):
        wait_until(lambda: station.uplink.connected, 15, f"connect {connect}")
        # Everything the station published before this event has arrived before it.
        event = station.buttons.broadcast_pressed(0.0).result(5)
        wait_until(lambda e=event: e.id in {x["id"] for x in township.events()}, 20,
                   f"an event after connect {connect}")
        with township._lock:  # live publishes only, not retained copies on resubscribe
            online = [m for t, m, retained in township.messages
                      if t.endswith("/v001/state") and m["online"] and not retained]
        assert len(online) == connect, online
        if connect == 1:
            # Counted, not watched: on a loaded machine the station may drop and reconnect
            # between two looks at `connected`.
            connects = station.uplink.connects
            own_broker.restart()
            wait_until(lambda n=connects: station.uplink.connects > n, 30, "a new connection")


def test_a_command_id_answered_before_a_restart_is_not_run_again(broker, start_station,
                                                                 township_factory):
    township = township_factory(broker.port)
    first = start_station(broker.port)
    wait_until(lambda: first.uplink.connected, what="station connected")
    township.command("v001", {"cmd": "state.get", "id": "keep-1"})
    township.command("v001", b'{"cmd": "state.get", "id": "keep-2", "x": 1}')  # rejected
    wait_until(lambda: _results(township, "keep-1") and _results(township, "keep-2"), 5)
    first.stop()
    second = start_station(broker.port)  # the same data directory
    wait_until(lambda: second.uplink.connected, what="station connected again")
    for cmd_id in ("keep-1", "keep-2"):
        township.command("v001", {"cmd": "state.get", "id": cmd_id})
    township.command("v001", {"cmd": "state.get", "id": "keep-3"})
    wait_until(lambda: _results(township, "keep-3"), 5, "the new command's answer")
    assert len(_results(township, "keep-1")) == 1 and len(_results(township, "keep-2")) == 1
