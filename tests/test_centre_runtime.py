"""The console's parts are owned by the app: the ASGI lifespan starts and stops them, and
the duty screen's server-sent events carry the changed cards themselves.

Real parts throughout: uvicorn running the console's ASGI app (in a child process, as
`serve` runs it), Mosquitto, an SQLite database, real stations; the event stream is read
as a browser's EventSource reads it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from centre_helpers import Centre, Database, database, press, station
from conftest import wait_until

from pingan_centre.console.live import Batch, Inbox
from pingan_sim.localbroker import free_port


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from database("sqlite", tmp_path)


@pytest.fixture
def township() -> str:
    return f"tw{uuid.uuid4().hex[:8]}"


# Run in a child process with the centre's Django set up (Centre.python): the same server
# `pingan-centre serve` runs, in a thread, so the test can see the process's threads.
_LIFESPAN = """
import threading, time, uuid
import paho.mqtt.client as mqtt
import requests
from django.conf import settings
from paho.mqtt.enums import CallbackAPIVersion
from pingan_centre.console.asgi import server
from pingan_centre.console.models import Event

CID = settings.CENTRE.client_id
def ours():
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("centre-") or t.name == "paho-mqtt-client-" + CID)

def until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.05)

before = ours()
web = server("127.0.0.1", PORT)
serving = threading.Thread(target=web.run, name="test-uvicorn")
serving.start()
until(lambda: web.started or not serving.is_alive(), 30, "uvicorn started")
running = ours()

# An event published to the broker is stored: the lifespan started the ingest.
t = settings.CENTRE.township
event = {"type": "button.broadcast", "id": str(uuid.uuid4()), "station": "s9",
         "township": t, "seq": 1, "priority": 2, "ts": "2026-11-23T10:00:00.000Z",
         "clock_synced": True,
         "payload": {"button": "broadcast", "source": "simulator", "held_s": 0.2}}
pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-pub", protocol=mqtt.MQTTv5)
pub.connect("127.0.0.1", BROKER)
pub.loop_start()
def stored():
    # Until the ingest has subscribed a publish is lost; the same event id again is harmless.
    pub.publish(f"pingan/v1/{t}/s9/events", json.dumps(event), qos=1).wait_for_publish(5)
    return Event.objects.filter(pk=event["id"]).exists()
until(stored, 30, "the event stored")
pub.loop_stop()
pub.disconnect()

# A duty screen's event stream is open when the server is told to stop.
officer = requests.Session()
url = f"http://127.0.0.1:{PORT}"
officer.get(url + "/login/", timeout=10)
officer.post(url + "/login/", data={"username": "officer", "password": "pw-for-tests",
             "csrfmiddlewaretoken": officer.cookies["csrftoken"]}, timeout=10)
lines = []
def read():
    try:
        with officer.get(url + "/events", stream=True, timeout=30) as r:
            for line in r.iter_lines():
                lines.append(line.decode())
        lines.append("<ended>")
    except requests.RequestException as exc:
        lines.append(f"<cut: {exc!r}>")
reader = threading.Thread(target=read, name="test-reader")
reader.start()
until(lambda: any(x.startswith("event: snapshot") for x in lines), 15, "the snapshot")

t0 = time.monotonic()
web.should_exit = True
serving.join(30)
stopped_s = time.monotonic() - t0
reader.join(10)
print(json.dumps({"before": before, "running": running, "after": ours(),
                  "stopped_s": stopped_s, "server_alive": serving.is_alive(),
                  "stream": lines[-1:]}))
"""


def test_the_lifespan_starts_and_stops_the_parts(tmp_path, db, broker, township):  # type: ignore[no-untyped-def]
    centre = Centre(tmp_path, db, broker.port, township)
    seen = centre.python(_LIFESPAN.replace("PORT", str(free_port()))
                         .replace("BROKER", str(broker.port)))
    assert seen["before"] == [], "nothing runs before the lifespan starts"
    cid = f"paho-mqtt-client-{_client_id(centre)}"
    assert set(seen["running"]) == {"centre-changes", "centre-escalation", "centre-ingest",
                                    "centre-clips", cid}, seen["running"]
    assert not seen["server_alive"], seen
    assert seen["stream"] == ["<ended>"], "the server ends the open event stream properly"
    assert seen["after"] == [], f"threads left after shutdown: {seen['after']}"
    # Bounded, and quick: the stream is not left to uvicorn's grace period.
    assert seen["stopped_s"] < 5, seen


def _client_id(centre: Centre) -> str:
    return str(centre.python("from django.conf import settings\n"
                             "print(json.dumps(settings.CENTRE.client_id))"))


_FAILED_STARTUP = """
import asyncio, threading
from pingan_centre.console.asgi import make_application

sent = []
async def main():
    messages = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    async def send(message):
        sent.append(dict(message))
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
             "state": {}}
    await asyncio.wait_for(make_application()(scope, messages.get, send), 60)
asyncio.run(main())
print(json.dumps({"sent": sent, "threads": sorted(
    t.name for t in threading.enumerate() if t.name.startswith(("centre-", "paho-")))}))
"""


def test_a_part_that_does_not_start_fails_the_startup_and_the_rest_is_closed(  # type: ignore[no-untyped-def]
        tmp_path, db, broker, township):
    missing = tmp_path / "no-such-ca.pem"
    centre = Centre(tmp_path, db, broker.port, township, broker={
        "host": "127.0.0.1", "port": broker.port, "tls_ca": str(missing)})
    # The lifespan protocol, spoken to the app as uvicorn speaks it. The ingest is the
    # last part: the change reader and the ladder had started and must be closed again.
    seen = centre.python(_FAILED_STARTUP)
    assert [m["type"] for m in seen["sent"]] == ["lifespan.startup.failed"]
    message = seen["sent"][0]["message"]
    assert "MQTT ingest did not start" in message and str(missing) in message, message
    assert seen["threads"] == [], f"left running after a failed startup: {seen['threads']}"
    # `pingan-centre serve` says so and exits (status 3), without serving.
    done = subprocess.run([sys.executable, "-m", "pingan_centre", "serve", "--host",
                           "127.0.0.1", "--port", str(free_port())], env=centre.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "could not start" in done.stderr and str(missing) in done.stderr


class Stream:
    """A duty screen's event stream, read as EventSource reads it: (event, id, data)."""

    def __init__(self, session: requests.Session, url: str, last_id: str = "") -> None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        self.response = session.get(f"{url}/events", stream=True, timeout=30,
                                    headers=headers)
        self.response.raise_for_status()
        assert self.response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        self.lines = (line.decode() for line in self.response.iter_lines())

    def next(self) -> tuple[str, str, dict[str, Any]]:
        kind, ident, data = "message", "", ""
        for line in self.lines:
            if line == "":
                if data:
                    return kind, ident, json.loads(data)
                kind, ident = "message", ""
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                data += line[6:]
        raise AssertionError("the stream ended")

    def until(self, check: Any, timeout: float = 15) -> tuple[str, str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.next()
            if check(*got):
                return got
        raise AssertionError("no such event in time")

    def close(self) -> None:
        self.response.close()


def test_an_event_carries_the_changed_card_so_the_screen_needs_no_second_request(  # type: ignore[no-untyped-def]
        tmp_path, db, broker, township):
    centre = Centre(tmp_path, db, broker.port, township, villages={"s1": "东村"}).start()
    s1 = station(tmp_path, broker.port, "s1", township)
    streams: list[Stream] = []
    try:
        wait_until(lambda: s1.uplink.connected, what="s1 connected")
        officer, viewer = centre.session("officer"), centre.session("viewer")
        mine = Stream(officer, centre.url)
        theirs = Stream(viewer, centre.url)
        streams += [mine, theirs]
        kind, first_id, data = mine.next()
        assert kind == "snapshot" and data["order"] == [] and data["cards"] == {}
        assert theirs.next()[0] == "snapshot"

        press(s1)
        kind, ident, data = mine.until(lambda k, i, d: k == "change" and d["order"])
        [alarm_id] = data["order"]
        card = data["cards"][str(alarm_id)]
        # The whole card, as the duty screen shows it: nothing more to fetch.
        assert f'id="alarm-{alarm_id}"' in card and 'data-state="new"' in card
        assert "东村" in card and "s1" in card
        assert 'value="ack"' in card, "the officer may acknowledge: the button is there"
        assert int(ident) == data["v"] > int(first_id), "the id is the version it brings"
        # Rendered for each user: the viewer sees the card without the button.
        _, _, seen = theirs.until(lambda k, i, d: k == "change" and d["order"])
        assert 'value="ack"' not in seen["cards"][str(alarm_id)]

        assert centre.post(officer, f"/alarm/{alarm_id}/ack").ok
        kind, ident, data = mine.until(
            lambda k, i, d: 'data-state="acknowledged"' in d["cards"].get(str(alarm_id), ""))
        assert kind == "change" and data["order"] == [alarm_id]
        assert "officer" in data["cards"][str(alarm_id)], "acknowledged by whom"
        last = ident

        # A screen that reconnects (EventSource sends Last-Event-ID) gets a full snapshot.
        mine.close()
        again = Stream(officer, centre.url, last_id=last)
        streams.append(again)
        kind, ident, data = again.next()
        assert kind == "snapshot" and data["order"] == [alarm_id]
        assert 'data-state="acknowledged"' in data["cards"][str(alarm_id)]
        assert int(ident) >= int(last)

        assert centre.post(officer, f"/alarm/{alarm_id}/resolve", outcome="test").ok
        kind, _, data = again.until(lambda k, i, d: d["order"] == [])
        assert kind == "change" and data["cards"] == {}, "a closed alarm's card goes"
    finally:
        for s in streams:
            s.close()
        s1.stop()
        centre.stop()


def test_a_slow_stream_is_resynced_instead_of_buffered() -> None:
    """An event stream whose client does not keep up holds at most `cap` changes; past
    that it holds only "resync" (a snapshot), however many changes come."""

    async def run() -> list[Batch | None]:
        inbox = Inbox(asyncio.get_running_loop(), cap=4)
        got: list[Batch | None] = []

        def offer(versions: range) -> None:  # from another thread, as the reader does
            for v in versions:
                assert inbox.offer(Batch(v, frozenset({v})))

        await asyncio.to_thread(offer, range(1, 4))
        got.append(await inbox.next(1.0))   # three waiting: merged into one
        got.append(await inbox.next(0.05))  # nothing more
        await asyncio.to_thread(offer, range(4, 10_000))
        got.append(await inbox.next(1.0))   # far behind: resync, nothing piled up
        got.append(await inbox.next(0.05))
        threading.Thread(target=offer, args=(range(10_000, 10_001),)).start()
        got.append(await inbox.next(5.0))   # woken by the offer, not by the timeout
        return got

    got = asyncio.run(run())
    assert got == [Batch(3, frozenset({1, 2, 3})), None, Batch(9_999, None), None,
                   Batch(10_000, frozenset({10_000}))]
