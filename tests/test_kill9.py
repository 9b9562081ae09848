"""kill -9 in the middle of a burst: every accepted event is delivered, no sequence gaps."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, schema, station_toml, wait_until

from edge.unit.control import request

UNIT_FILE = Path(__file__).resolve().parents[1] / "systemd" / "pingan-edge.service"
TIMEOUT_STOP_S = float(re.search(r"^TimeoutStopSec=(\d+)$", UNIT_FILE.read_text(), re.M)[1])


def test_sigkill_mid_burst_then_restart_delivers_every_accepted_event(broker, tmp_path,
                                                                     township_factory):
    township = township_factory(broker.port)
    config = tmp_path / "station.toml"
    data = tmp_path / "data"
    config.write_text(station_toml(data, broker.port, buttons={"panic_hold_s": 0.0},
                                   log={"level": "info"}))
    daemon = Daemon(config, simulated=True)
    daemon.wait_logged("uplink.connected")

    def burst(button: str, count: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # the daemon dies under us: the point
            request(data / "control.sock", {"op": "press", "button": button, "count": count,
                                            "interval_s": 0.001}, timeout=60)

    presses = [threading.Thread(target=burst, args=("broadcast", 5000)),
               threading.Thread(target=burst, args=("panic", 500))]
    for t in presses:
        t.start()
    wait_until(lambda: len(daemon.logged("event.accepted")) >= 400, 30, "burst under way")
    daemon.proc.send_signal(signal.SIGKILL)
    assert daemon.finish() == -signal.SIGKILL
    # The broker publishes the station's Last Will: the township sees it go offline.
    def live_offline() -> list[dict[str, object]]:  # not a retained one from earlier tests
        with township._lock:
            return [m for t, m, retained in township.messages
                    if t.endswith("/v001/state") and m["online"] is False and not retained]

    [will] = wait_until(live_offline, 15, "Last Will")
    # Set at connect time, sent by the broker later: it carries no time of its own.
    schema("state").validate(will)
    assert will["ts"] is None
    for t in presses:
        t.join(10)
    accepted = {line["id"]: line["seq"] for line in daemon.logged("event.accepted")}
    assert len(accepted) >= 400

    restarted = Daemon(config, simulated=True)
    try:
        restarted.wait_logged("station.started")
        wait_until(lambda: set(accepted) <= {e["id"] for e in township.unique_events()}, 60,
                   "every accepted event at the township")
        wait_until(lambda: restarted.logged("uplink.connected"))
        events = township.unique_events()
        by_seq: dict[int, str] = {}
        for e in events:
            assert by_seq.setdefault(e["seq"], e["id"]) == e["id"], f"seq {e['seq']} reused"
        top = max(by_seq)
        assert sorted(by_seq) == list(range(1, top + 1)), "no gaps in the sequence"
        for event_id, seq in accepted.items():
            assert by_seq[seq] == event_id
        # Alarms pending at the restart light the LED again until delivered; a new event
        # continues the sequence after everything the killed process committed.
        request(data / "control.sock", {"op": "press", "button": "broadcast"})
        wait_until(lambda: any(e["seq"] == top + 1 for e in township.unique_events()), 10)
    finally:
        restarted.proc.send_signal(signal.SIGTERM)
        restarted.finish()


def test_sigterm_stops_before_systemd_would_kill_and_says_offline(broker, tmp_path,
                                                                  township_factory):
    township = township_factory(broker.port)
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", broker.port))
    daemon = Daemon(config)
    daemon.wait_logged("uplink.connected")
    wait_until(lambda: township.on("/v001/state"))
    started = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.finish() == 0
    # The requirement is systemd's: after TimeoutStopSec it sends SIGKILL. Station.stop
    # bounds its own waits at ~1 s, so only a stop that blocks fails this, not a slow machine.
    assert time.monotonic() - started < TIMEOUT_STOP_S  # includes interpreter exit
    assert daemon.logged("station.stopped")[0]["took_s"] < TIMEOUT_STOP_S
    last_state = wait_until(lambda: [s for s in township.on("/v001/state") if not s["online"]])
    assert last_state[-1]["station"] == "v001"


def test_systemd_notify_ready_and_watchdog_pings(broker, tmp_path):
    import os
    import socket

    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(5)
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", broker.port))
    os.environ.update(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000")
    try:
        daemon = Daemon(config)
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    try:
        messages = [listener.recv(4096).decode() for _ in range(4)]
        assert messages[0].startswith("READY=1")
        assert messages[1:] == ["WATCHDOG=1"] * 3
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0
        tail = []
        with contextlib.suppress(TimeoutError):
            while True:
                tail.append(listener.recv(4096).decode())
        assert tail[-1] == "STOPPING=1", tail
        listener.close()


def test_watchdog_stays_silent_when_unhealthy(tmp_path, monkeypatch):
    import socket

    from edge.unit.watchdog import Watchdog

    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(0.5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    healthy = [True]
    dog = Watchdog(lambda: healthy[0])
    dog.start()
    assert listener.recv(100).startswith(b"READY=1")
    assert listener.recv(100) == b"WATCHDOG=1"
    healthy[0] = False
    time.sleep(0.1)
    with contextlib.suppress(TimeoutError):
        while True:  # drain pings sent before the flip
            listener.recv(100)
    with pytest.raises(TimeoutError):
        listener.recv(100)
    dog.close()
    listener.close()
