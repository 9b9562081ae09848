"""Shared fixtures: real Mosquitto brokers on free ports, real stations, a township view."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import config as config_mod
from edge.config import Config
from edge.contract.topics import township_filter
from edge.link.uplink import set_no_delay
from edge.station import Station
from pingan_sim.localbroker import Mosquitto
from pingan_sim.township import Client

if TYPE_CHECKING:
    from selenium import webdriver

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "docs" / "schema"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def wait_while_progressing(progress: Callable[[], int], done: Callable[[], bool],
                           stall_s: float, what: str) -> None:
    """Wait for `done`, as long as `progress` (a count that only grows) keeps moving: a
    loaded machine may be slow, but a station that stops answering fails after `stall_s`
    without a step. For work whose total time depends on the machine, not on the code."""
    last, deadline = -1, 0.0
    while not done():
        now = progress()
        if now != last:
            last, deadline = now, time.monotonic() + stall_s
        elif time.monotonic() > deadline:
            raise AssertionError(f"no progress for {stall_s} s (at {last}) waiting for {what}")
        time.sleep(0.05)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml): one worker per core, at most four. The suite mostly waits
    on brokers, stations and browsers; more workers than that only crowd a small machine."""
    return max(1, min(os.cpu_count() or 1, 4))


def schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One shared broker for tests that do not stop it."""
    b = Mosquitto(tmp_path_factory.mktemp("broker"), persistence=False).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker this test may stop, kill and restart (persistence on, like a township's)."""
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop(kill=True)


def station_toml(data_dir: Path, port: int, station: str = "v001", **sections: dict[str, Any]
                 ) -> str:
    base: dict[str, dict[str, Any]] = {
        "station": {"id": station, "township": "t01", "data_dir": str(data_dir)},
        "broker": {"host": "127.0.0.1", "port": port, "keepalive_s": 5},
        "uplink": {"backoff_min_s": 0.05, "backoff_max_s": 0.5},
        "pins": {"factory": "mock"},
        "buttons": {"panic_hold_s": 0.1, "bounce_s": 0.0},
        # Off unless a test is about the loudspeaker (tests/test_audio_*.py): siren and
        # prompt events would change the event counts other tests assert.
        "audio": {"enabled": False},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = []
    for name, values in base.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def make_config(data_dir: Path, port: int, **sections: dict[str, Any]) -> Config:
    return config_mod.parse(station_toml(data_dir, port, **sections))


@pytest.fixture
def start_station(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    started: list[Station] = []

    def start(port: int, station_args: dict[str, Any] | None = None,
              **sections: dict[str, Any]) -> Station:
        """A started station on `port`; `station_args` go to Station() (its parts)."""
        station = Station(make_config(tmp_path / "station", port, **sections),
                          **(station_args or {}))
        station.start()
        started.append(station)
        return station

    yield start
    for s in started:
        with contextlib.suppress(Exception):  # already stopped by the test
            s.stop()


class Township:
    """The township centre's view: every message under pingan/v1/<township>/#.

    With `session` set it uses a persistent session, so messages published while it is
    away (or while the broker restarts) are queued for it, as for a real centre."""

    def __init__(self, port: int, township: str = "t01", session: str | None = None) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=session or "")
        self.client.on_socket_open = set_no_delay
        # paho backs off up to 120 s by default: a test broker restart must not wait that.
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=1)
        self.client.on_connect = lambda c, *_: c.subscribe(township_filter(township), qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if session else 0
        self.client.connect("127.0.0.1", port, keepalive=5, clean_start=session is None,
                            properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "township could not subscribe"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/cmd"):
            return  # the township's own commands, echoed back by the subscription
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m, _ in self.messages if t.endswith(suffix)]

    def events(self) -> list[dict[str, Any]]:
        return self.on("/events")

    def unique_events(self) -> list[dict[str, Any]]:
        """De-duplicated by event id, first arrival kept: what the officers see."""
        seen: set[str] = set()
        out = []
        for event in self.events():
            if event["id"] not in seen:
                seen.add(event["id"])
                out.append(event)
        return out

    def command(self, station: str, payload: bytes | dict[str, Any], township: str = "t01",
                topic: str | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic or f"pingan/v1/{township}/{station}/cmd", data, qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def township_factory() -> Iterator[Callable[..., Township]]:
    made: list[Township] = []

    def make(port: int, **kw: Any) -> Township:
        t = Township(port, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


class Daemon:
    """`python -m edge run` as a real child process, its JSON log lines collected; with
    `simulated`, `python -m pingan_sim run` (the same station, whose buttons the test
    presses over the control socket)."""

    def __init__(self, config_path: Path, *, simulated: bool = False, umask: int = -1,
                 prefix: tuple[str, ...] = ()) -> None:
        """`prefix` runs it under another command (`ip netns exec NS`)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pingan_sim" if simulated else "edge", "run", "-c",
             str(config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True,
            umask=umask)
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": "raw", "text": line})

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in list(self.lines) if entry.get("event") == event]

    def wait_logged(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        return wait_until(lambda: (self.logged(event) or [None])[-1], timeout, event)  # type: ignore[no-any-return]

    def finish(self, timeout: float = 10.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # Say where it stopped: the last lines it wrote before it hung.
            tail = "\n".join(json.dumps(line, ensure_ascii=False) for line in self.lines[-25:])
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the station did not exit within {timeout} s of the signal; "
                                 f"its last log lines:\n{tail}") from None
        self._reader.join(5)
        return code


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """MQTT clients a test opens on a township broker, closed after it."""
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Callable[..., webdriver.Chrome]]:
    """Opens Debian's Chromium (browser_helpers.browser, its profile under the test's tmp
    dir) when the test calls it, with any extra flags; quit after the test. Mark the test
    or module `browser_helpers.needs_chromium`."""
    from browser_helpers import browser  # selenium only for the tests that use it

    opened: list[webdriver.Chrome] = []

    def open_browser(*flags: str) -> webdriver.Chrome:
        driver = browser(tmp_path / (f"profile-{len(opened)}" if opened else "profile"),
                         *flags)
        opened.append(driver)
        return driver

    yield open_browser
    for driver in opened:
        driver.quit()
