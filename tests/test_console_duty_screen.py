"""The duty screen at 3 a.m., in Debian's Chromium (issue 19): it never turns into an
error page while an alarm is open (the centre killed, answering 500, back again), a new
alarm takes the whole screen until acknowledged, the card names the village and the
station, and the alarm sound stays armed when the officer switches language."""

from __future__ import annotations

import http.server
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from browser_helpers import card_state, login, needs_chromium
from centre_helpers import Centre, database
from conftest import station_toml, wait_until
from selenium import webdriver
from selenium.webdriver.common.by import By

from edge import config as config_mod
from edge.station import Station
from pingan_sim.localbroker import reachable

pytestmark = needs_chromium


def start_station(tmp: Path, port: int, name: str, township: str, label: str) -> Station:
    text = station_toml(tmp / name, port, station=name).replace(
        'township = "t01"', f'township = "{township}"\nname = "{label}"', 1)
    st = Station(config_mod.parse(text))
    st.start()
    return st


def press(st: Station) -> None:
    pin = st.pin_factory.pin(st.config.pins.panic)
    pin.drive_low()
    time.sleep(0.25)  # held past panic_hold_s (0.1 s): a press, not a bounce
    pin.drive_high()


def body(driver: webdriver.Chrome, attr: str) -> str:
    return driver.find_element(By.TAG_NAME, "body").get_attribute(attr) or ""


def js(driver: webdriver.Chrome, code: str) -> Any:
    return driver.execute_script(code)


def arm_sound(driver: webdriver.Chrome) -> None:
    driver.find_element(By.ID, "enable-sound").click()
    wait_until(lambda: body(driver, "data-sound") == "armed", 10, "sound armed")


class Broken(http.server.BaseHTTPRequestHandler):
    """What an officer's browser gets from a centre that fails on every request."""

    def do_GET(self) -> None:
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<h1>Server Error (500)</h1>")

    def log_message(self, *_: Any) -> None:
        pass


def test_the_open_screen_survives_a_dead_and_a_failing_centre(tmp_path, broker, chromium):  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township, villages={"s1": "东村"}).start()
    s1 = start_station(tmp_path, broker.port, "s1", township, "东村一号")
    driver = chromium()
    try:
        wait_until(lambda: s1.uplink.connected, what="station up")
        login(driver, centre, "officer")
        arm_sound(driver)
        press(s1)
        wait_until(lambda: card_state(driver) == "new", 15, "alarm card")
        wait_until(lambda: body(driver, "data-ringing") == "1", 5, "alarm tone ringing")

        def still_on_duty(what: str) -> None:
            """The same page: its card, its ringing, its armed sound, and the banner."""
            wait_until(lambda: driver.find_element(By.ID, "link-lost").is_displayed(), 20,
                       f"'connection lost' shown ({what})")
            banner = driver.find_element(By.ID, "link-lost").text
            assert "中断" in banner and re.search(r"\d\d:\d\d:\d\d", banner), banner
            assert card_state(driver) == "new", f"the card stays ({what})"
            assert body(driver, "data-ringing") == "1", f"still ringing ({what})"
            assert body(driver, "data-sound") == "armed", f"sound still armed ({what})"
            assert js(driver, "return pinganSound();") == "running"
            assert "Server Error" not in driver.page_source
            assert driver.current_url.rstrip("/") == centre.url, driver.current_url

        centre.kill()  # kill -9: no goodbye on the stream
        still_on_duty("centre killed")
        lost_at = driver.find_element(By.ID, "lost-at").text
        # The same address now answers every request with 500, for a few probes.
        stub = http.server.ThreadingHTTPServer(("127.0.0.1", centre.port), Broken)
        threading.Thread(target=stub.serve_forever, daemon=True).start()
        try:
            wait_until(lambda: js(driver, "return window.pinganProbes || 0;") >= 2, 20,
                       "the page asked the failing centre again")
            still_on_duty("centre answers 500")
            assert driver.find_element(By.ID, "lost-at").text == lost_at, "lost since then"
        finally:
            stub.shutdown()
            stub.server_close()
        wait_until(lambda: not reachable("127.0.0.1", centre.port, 0.2), 10, "stub gone")
        centre.start()
        wait_until(lambda: not driver.find_element(By.ID, "link-lost").is_displayed(), 30,
                   "back: the banner goes")
        assert card_state(driver) == "new" and body(driver, "data-sound") == "armed"
        driver.find_element(By.ID, "overlay-ack").click()  # the new alarm fills the screen
        wait_until(lambda: card_state(driver) == "acknowledged", 15, "acknowledged after")
    finally:
        s1.stop()
        centre.stop()
        db.drop()


def card_text(driver: webdriver.Chrome, state: str) -> str:
    """Read in one step: the live screen may redraw a card between finding and reading."""
    return js(driver, f"var c = document.querySelector('#cards .card[data-state={state}]');"
                      "return c ? c.innerText : '';") or ""


def overlay(driver: webdriver.Chrome) -> str:
    """The overlay's text when it covers the whole window (else "")."""
    return js(driver, """
        var o = document.getElementById('alarm-overlay');
        if (!o || o.hidden) { return ''; }
        var r = o.getBoundingClientRect();
        var w = document.documentElement.clientWidth, h = document.documentElement.clientHeight;
        var covers = r.left <= 0 && r.top <= 0 && r.right >= w && r.bottom >= h
                     && o.contains(document.elementFromPoint(w / 2, h / 2));
        return covers ? o.innerText : '';""")


def test_a_new_alarm_takes_the_screen_and_the_sound_survives_a_language_switch(  # type: ignore[no-untyped-def]
        tmp_path, broker, chromium):
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township,
                    villages={"s1": "东村", "s2": "西村", "s3": "南村"}).start()
    stations = {n: start_station(tmp_path, broker.port, n, township, label)
                for n, label in (("s1", "东村一号"), ("s2", "西村二号"), ("s3", "南村三号"))}
    driver = chromium()
    try:
        wait_until(lambda: all(s.uplink.connected for s in stations.values()),
                   what="stations up")
        # Each station's state (with its name) is stored before its alarm.
        wait_until(lambda: len(db.rows("SELECT name FROM console_station WHERE label != ''"))
                   == 3, 15, "station names from their states")
        login(driver, centre, "officer")
        arm_sound(driver)
        assert overlay(driver) == "", "no alarm, no overlay"

        press(stations["s1"])
        wait_until(lambda: "东村一号" in overlay(driver), 15, "the alarm takes the screen")
        assert "东村" in overlay(driver) and "新报警" in overlay(driver)
        text = card_text(driver, "new")
        assert "东村" in text and "东村一号" in text, text
        driver.find_element(By.ID, "overlay-ack").click()
        wait_until(lambda: card_state(driver) == "acknowledged", 15, "acknowledged")
        wait_until(lambda: overlay(driver) == "", 5, "the overlay goes once acknowledged")
        assert "edge-flash" not in body(driver, "class")

        press(stations["s2"])
        wait_until(lambda: "西村二号" in overlay(driver), 15, "the next alarm takes it again")
        driver.find_element(By.ID, "overlay-card").click()
        wait_until(lambda: overlay(driver) == "", 5, "put aside: the cards show")
        assert "edge-flash" in body(driver, "class"), "the page edge flashes meanwhile"
        wait_until(lambda: body(driver, "data-ringing") == "1", 5, "ringing")

        # The language, switched while an alarm rings: the same page, the sound armed.
        js(driver, "window.samePage = 'yes';")
        driver.find_element(By.CSS_SELECTOR, "button[name=language][value=en]").click()
        wait_until(lambda: "Open alarms" in driver.find_element(By.ID, "duty-title").text,
                   15, "English")
        wait_until(lambda: "Acknowledge" in card_text(driver, "new"), 15, "the cards in English")
        assert js(driver, "return window.samePage;") == "yes", "not reloaded"
        assert body(driver, "data-sound") == "armed"
        assert js(driver, "return pinganSound();") == "running"
        assert body(driver, "data-ringing") == "1" and "edge-flash" in body(driver, "class")
        assert "未处置" not in driver.find_element(By.TAG_NAME, "main").text

        press(stations["s3"])
        wait_until(lambda: "南村三号" in overlay(driver), 15, "a new alarm, in English")
        driver.save_screenshot(str(tmp_path / "new-alarm-in-english.png"))
        assert "New alarm" in overlay(driver) and "Acknowledge" in overlay(driver)
        driver.find_element(By.ID, "overlay-ack").click()
        wait_until(lambda: overlay(driver) == "", 15, "acknowledged from the overlay")
        # Back to Chinese the same way; the sound is still armed.
        driver.find_element(By.CSS_SELECTOR, "button[name=language][value=zh-hans]").click()
        wait_until(lambda: "未处置" in driver.find_element(By.ID, "duty-title").text, 15,
                   "Chinese again")
        assert js(driver, "return window.samePage;") == "yes"
        assert js(driver, "return pinganSound();") == "running"
    finally:
        for st in stations.values():
            st.stop()
        centre.stop()
        db.drop()
