"""Press -> card in the duty officer's browser, with many light stations connected.

What it measures
    A private Mosquitto; a console (`pingan-centre serve`, SQLite by default, or
    `--database postgres`); `--stations` light simulated stations (one paho client each,
    MQTT v5, a Last Will, a retained state on connect and every `--state-s` seconds, a
    `status` event every `--event-s` seconds, staggered); one real `edge.station.Station`
    (mock pins, panic_hold_s = 0, durable outbox); Debian's chromium, headless, logged in
    on the duty screen with the sound armed.

    press -> card:    time.time() just before `drive_low()` on the real station's panic pin,
                      to the moment the card is in the page's DOM (a MutationObserver notes
                      Date.now(); same machine, same clock).
    press -> MQTT:    the same press to its arrival at a bare paho subscriber of the
                      township (the baseline: what the network and broker alone cost).
    After each press the bench acknowledges and resolves the alarm over HTTP and waits for
    the card to go, so every press makes a new card. p50/p99 nearest rank (with 50
    presses, p99 is the maximum).

Goal: press -> card p99 under 1 s with 1,000 stations.

Run
    python3 bench/centre_latency.py                       # 1,000 stations, 50 presses
    python3 bench/centre_latency.py --stations 200 --presses 20
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import requests
from centre_common import PASSWORD, Centre, Db, browser, dumps, event, pg_available, state
from common import loadavg, machine_line, pct
from paho.mqtt.enums import CallbackAPIVersion
from selenium.webdriver.common.by import By

from edge import config as config_mod
from edge.station import Station
from pingan_sim.localbroker import Mosquitto

OBSERVER = """
window.__cards = {};
new MutationObserver(function () {
  document.querySelectorAll('#cards .card').forEach(function (c) {
    if (!(c.id in window.__cards)) { window.__cards[c.id] = Date.now(); }
  });
}).observe(document.getElementById('cards'), {childList: true, subtree: true});
"""


PER_PROCESS = 250  # paho's loop uses select(): every fd of a process must stay below 1024


def _light_process(port: int, township: str, first: int, n: int, state_s: float,
                   event_s: float, ready: Any, stop: Any) -> None:
    lights = LightStations(port, township, n, state_s, event_s, first).start()
    ready.set()
    stop.wait()
    lights.stop()


class LightStations:
    """Many light stations: a client each, sending state and events on a schedule."""

    def __init__(self, port: int, township: str, n: int, state_s: float, event_s: float,
                 first: int = 0) -> None:
        self.clients: list[tuple[str, mqtt.Client]] = []
        self.township = township
        self.state_s, self.event_s = state_s, event_s
        self.sent = 0
        self._stop = threading.Event()
        for i in range(first, first + n):
            name = f"l{i:04d}"
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{township}-{name}",
                            protocol=mqtt.MQTTv5)
            topic = f"pingan/v1/{township}/{name}/state"
            c.will_set(topic, dumps(state(township, name, online=False)), qos=1, retain=True)
            c.on_connect = (lambda cl, *_a, t=topic, nm=name: cl.publish(
                t, dumps(state(township, nm)), qos=1, retain=True))
            c.connect("127.0.0.1", port, keepalive=60)
            c.loop_start()
            self.clients.append((name, c))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LightStations:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = len(self.clients)
        tick = 0.05
        t = 0
        seq = 0
        while not self._stop.wait(tick):
            t += 1
            # Staggered: each station once per state_s / event_s.
            per_tick_state = max(1, round(n * tick / self.state_s))
            per_tick_event = max(1, round(n * tick / self.event_s))
            for k in range(per_tick_state):
                name, c = self.clients[(t * per_tick_state + k) % n]
                c.publish(f"pingan/v1/{self.township}/{name}/state",
                          dumps(state(self.township, name)), qos=1, retain=True)
            seq += 1
            for k in range(per_tick_event):
                name, c = self.clients[(t * per_tick_event + k + n // 2) % n]
                c.publish(f"pingan/v1/{self.township}/{name}/events",
                          dumps(event(self.township, name, seq, "status")), qos=1)
            self.sent += per_tick_state + per_tick_event

    def stop(self) -> None:
        self._stop.set()
        for _name, c in self.clients:
            c.loop_stop()
            c.disconnect()


def run(args: argparse.Namespace, tmp: Path) -> int:
    township = f"lat{uuid.uuid4().hex[:5]}"
    broker = Mosquitto(tmp / "broker", persistence=False,
                       extra="max_inflight_messages 100").start()
    db = Db(args.database, tmp)
    centre = Centre(tmp, db, broker.port, township, users={"officer": "duty_officer"})
    centre.start()
    procs: list[Any] = []
    stop_lights: Any = None
    driver = None
    st = None
    arrivals: dict[str, float] = {}
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        t0 = time.monotonic()
        ctx = multiprocessing.get_context("spawn")
        stop_lights = ctx.Event()
        for first in range(0, args.stations, PER_PROCESS):
            ready = ctx.Event()
            proc = ctx.Process(target=_light_process, daemon=True, args=(
                broker.port, township, first, min(PER_PROCESS, args.stations - first),
                args.state_s, args.event_s, ready, stop_lights))
            proc.start()
            procs.append(proc)
            if not ready.wait(120):
                raise RuntimeError("light stations did not connect")
        print(f"{args.stations} light stations connected in {time.monotonic() - t0:.1f} s "
              f"({len(procs)} processes)", file=sys.stderr)

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if b'"alarm.panic"' in msg.payload:
                arrivals[msg.payload.decode()] = time.time()

        print("subscriber...", file=sys.stderr)
        sub.on_message = on_message
        sub.connect("127.0.0.1", broker.port)
        sub.subscribe(f"pingan/v1/{township}/+/events", qos=1)
        sub.loop_start()

        toml = f"""
[station]
id = "real1"
township = "{township}"
data_dir = "{tmp / 'real1'}"
[broker]
host = "127.0.0.1"
port = {broker.port}
[pins]
factory = "mock"
[buttons]
panic_hold_s = 0
bounce_s = 0
[audio]
enabled = false
"""
        print("station...", file=sys.stderr)
        st = Station(config_mod.parse(toml))
        st.start()
        pin = st.pin_factory.pin(st.config.pins.panic)

        print("browser...", file=sys.stderr)
        driver = browser(tmp / "profile")
        driver.get(f"{centre.url}/login/")
        driver.find_element(By.ID, "id_username").send_keys("officer")
        driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "form.login button").click()
        driver.find_element(By.ID, "enable-sound").click()
        driver.execute_script(OBSERVER)
        assert driver.execute_script("return typeof window.__cards;") == "object"
        print("logged in...", file=sys.stderr)
        http = requests.Session()
        http.get(f"{centre.url}/login/")
        http.post(f"{centre.url}/login/", data={"username": "officer", "password": PASSWORD,
                  "csrfmiddlewaretoken": http.cookies["csrftoken"]})
        time.sleep(args.settle)  # let the light stations reach their steady rate

        print("pressing...", file=sys.stderr)
        to_card: list[float] = []
        to_mqtt: list[float] = []
        for i in range(args.presses + args.warmup):
            arrivals.clear()
            before = set(driver.execute_script("return Object.keys(window.__cards);"))
            start = time.time()
            pin.drive_low()
            deadline = time.monotonic() + 15
            card_at = None
            while time.monotonic() < deadline:
                seen = driver.execute_script("return window.__cards;")
                new = [k for k in seen if k not in before]
                if new:
                    card_at = seen[new[0]] / 1000.0
                    alarm_id = new[0].removeprefix("alarm-")
                    break
                time.sleep(0.01)
            pin.drive_high()
            if card_at is None:
                raise RuntimeError(f"press {i}: no card within 15 s")
            mqtt_at = min(arrivals.values()) if arrivals else float("nan")
            if i >= args.warmup:
                to_card.append(card_at - start)
                to_mqtt.append(mqtt_at - start)
            for action, extra in (("ack", {}), ("resolve", {"outcome": "test"})):
                http.post(f"{centre.url}/alarm/{alarm_id}/{action}", data={
                    **extra, "csrfmiddlewaretoken": http.cookies["csrftoken"]},
                    headers={"Accept": "application/json"}, timeout=15).raise_for_status()
            deadline = time.monotonic() + 15
            while driver.execute_script("return document.querySelectorAll('#cards .card')"
                                        ".length;"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"press {i}: the resolved card did not go")
                time.sleep(0.02)
            if i % 10 == 9:
                print(f"  {i + 1} presses", file=sys.stderr)
            time.sleep(args.gap)
        n = args.stations
        rate = n / args.state_s + n / args.event_s
        print(f"press -> card in the browser, {n} light stations (state every "
              f"{args.state_s:.0f} s, an event every {args.event_s:.0f} s: >= {rate:.0f} msg/s), "
              f"{args.database}, {len(to_card)} presses:")
        print(f"  press -> card : p50 {statistics.median(to_card) * 1000:7.1f} ms   "
              f"p99 {pct(to_card, 99) * 1000:7.1f} ms")
        print(f"  press -> MQTT : p50 {statistics.median(to_mqtt) * 1000:7.1f} ms   "
              f"p99 {pct(to_mqtt, 99) * 1000:7.1f} ms   (baseline: bare subscriber)")
        print(f"  goal p99 < 1000 ms: {'met' if pct(to_card, 99) < 1.0 else 'NOT met'}")
        return 0 if pct(to_card, 99) < 1.0 else 1
    finally:
        if driver:
            driver.quit()
        if st:
            st.stop()
        sub.loop_stop()
        if stop_lights is not None:
            stop_lights.set()
        for proc in procs:
            proc.join(30)
        centre.stop()
        db.close()
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=1000)
    parser.add_argument("--presses", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--state-s", type=float, default=60.0)
    parser.add_argument("--event-s", type=float, default=120.0)
    parser.add_argument("--gap", type=float, default=0.3)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    if args.database == "postgres" and not pg_available():
        print("PostgreSQL is not reachable on 127.0.0.1:5432", file=sys.stderr)
        return 2
    logging.getLogger("edge").setLevel(logging.ERROR)  # the real station's JSON lines
    load = loadavg()
    with tempfile.TemporaryDirectory(prefix="centre-latency-") as tmpdir:
        code = run(args, Path(tmpdir))
    print(machine_line(load))
    return code


if __name__ == "__main__":
    sys.exit(main())
