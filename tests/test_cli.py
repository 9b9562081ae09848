"""The simulator as a person uses it: `run`, `press`, `tail`, `status`, as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import Daemon, station_toml

from edge.link.uplink import Backoff
from pingan_sim.localbroker import free_port


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_press_and_tail_against_a_station_that_started_its_own_broker(tmp_path):
    """No broker where the config points: the simulator starts a private mosquitto, and
    `tail` finds it through the station's control socket."""
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", free_port(),
                                   broker={"local_fallback": True}))
    daemon = Daemon(config, simulated=True)
    try:
        started = daemon.wait_logged("station.local_broker")
        daemon.wait_logged("uplink.connected")
        tail = subprocess.Popen([sys.executable, "-m", "edge", "tail", "-c", str(config),
                                 "--count", "2", "--timeout", "20"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        status = json.loads(cli("status", "-c", str(config)).stdout)
        assert status["broker"]["port"] == started["port"] and status["connected"] is True
        time.sleep(0.5)  # let tail subscribe
        pressed = cli("press", "panic", "-c", str(config))
        assert pressed.returncode == 0 and json.loads(pressed.stdout)["ok"] is True
        # Answered once the event is stored, with what a technician checks it by.
        [alarm] = json.loads(pressed.stdout)["events"]
        assert alarm["type"] == "alarm.panic" and alarm["seq"] >= 1
        broadcast = cli("press", "broadcast", "-c", str(config))
        assert broadcast.returncode == 0
        assert json.loads(broadcast.stdout)["events"][0]["seq"] == alarm["seq"] + 1
        out, err = tail.communicate(timeout=30)
        assert tail.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        events = [line["message"] for line in lines if line["topic"].endswith("/events")]
        assert [e["type"] for e in events] == ["alarm.panic", "button.broadcast"]
        assert (events[0]["id"], events[0]["seq"]) == (alarm["id"], alarm["seq"])
        # Too short to be a panic press (panic_hold_s = 0.1 in tests): an error, exit 1.
        brushed = cli("press", "panic", "--hold", "0.01", "-c", str(config))
        assert brushed.returncode == 1
        assert "raised no event" in json.loads(brushed.stdout)["error"]
        assert json.loads(cli("status", "-c", str(config)).stdout)["alarm_led"] == "delivered"
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish() == 0


def test_press_without_a_running_station_says_how_to_start_one(tmp_path):
    config = tmp_path / "station.toml"
    config.write_text(station_toml(tmp_path / "data", free_port()))
    result = cli("press", "panic", "-c", str(config))
    assert result.returncode != 0
    assert "no station is running" in result.stderr and "pingan-edge run" in result.stderr


def test_backoff_is_capped_jittered_and_resets():
    import random

    backoff = Backoff(0.5, 8.0, random.Random(1))
    delays = [backoff.next() for _ in range(12)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert max(delays[6:]) > 4.0, "grows towards the cap"
    assert len({round(d, 6) for d in delays}) == len(delays), "jittered, not lock-step"
    backoff.reset()
    assert backoff.next() == 0.5, "back to the base after a successful connect"
