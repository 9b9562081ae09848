"""A duty officer's night in a real browser (Debian's chromium, headless): the button is
pressed at a station, the card appears with the sound armed, and the officer clicks the
alarm through to the end. Screenshots are kept under the test's tmp dir."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from browser_helpers import card_state, login, needs_chromium
from centre_helpers import Centre, database, station
from conftest import wait_until
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

from edge.unit.indicator import Mode

pytestmark = needs_chromium


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    path = tmp_path / "screenshots"
    path.mkdir()
    return path


@pytest.fixture
def driver(chromium: Callable[[], webdriver.Chrome]) -> webdriver.Chrome:
    return chromium()


def on_card(driver: webdriver.Chrome, act: Callable[[WebElement], None]) -> None:
    """Act on the first card; the live screen may redraw it between find and click."""
    for _ in range(20):
        try:
            act(driver.find_element(By.CSS_SELECTOR, "#cards .card"))
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError("the card kept being redrawn")


def card_text(driver: webdriver.Chrome, selector: str = "") -> str:
    return driver.execute_script(  # type: ignore[no-any-return]
        f"var c = document.querySelector('#cards .card {selector}');"
        "return c ? c.innerText : '';")


def test_officer_clicks_a_whole_alarm_through(tmp_path, broker, driver, shots):  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    # The ladder's first rung after 1 s: the real ticker makes the card loud and flashing.
    ladder = '[[escalation.steps]]\nafter_s = 1\nname = "louder"\nnotify = ["log"]\nloud = true\n'
    centre = Centre(tmp_path, db, broker.port, township,
                    villages={"s1": "东村", "s2": "西村"}, toml=ladder).start()
    s1 = station(tmp_path, broker.port, "s1", township, indicator={"ack_display_s": 60})
    s2 = station(tmp_path, broker.port, "s2", township)
    try:
        wait_until(lambda: s1.uplink.connected and s2.uplink.connected, what="stations up")
        login(driver, centre, "officer")
        # The one click browsers need before they play sound, made obvious.
        banner = driver.find_element(By.ID, "sound-banner")
        assert banner.is_displayed()
        driver.save_screenshot(str(shots / "1-sound-banner.png"))
        driver.find_element(By.ID, "enable-sound").click()
        wait_until(lambda: driver.find_element(By.TAG_NAME, "body")
                   .get_attribute("data-sound") == "armed", 10, "sound armed")
        assert not banner.is_displayed()

        # The real button at the station, held past panic_hold_s.
        pin = s1.pin_factory.pin(s1.config.pins.panic)
        pin.drive_low()
        time.sleep(0.25)
        pin.drive_high()
        wait_until(lambda: card_state(driver) == "new", 15, "alarm card")
        body = driver.find_element(By.TAG_NAME, "body")
        wait_until(lambda: body.get_attribute("data-ringing") == "1", 5, "alarm tone ringing")
        assert "东村" in card_text(driver) and "s1" in card_text(driver)
        wait_until(lambda: ":" in card_text(driver, ".elapsed"), 5, "elapsed time ticking")
        driver.save_screenshot(str(shots / "2-new-alarm.png"))
        wait_until(lambda: driver.execute_script(
            "var c = document.querySelector('#cards .card.loud'); return c !== null;"), 10,
            "escalated: loud, flashing card")
        assert "已升级" in card_text(driver)
        wait_until(lambda: "alarm-flash" in (body.get_attribute("class") or ""), 5,
                   "the whole screen flashes")
        driver.save_screenshot(str(shots / "2b-escalated.png"))

        # The new alarm fills the screen (issue 19): acknowledged from there.
        assert driver.find_element(By.ID, "alarm-overlay").is_displayed()
        driver.find_element(By.ID, "overlay-ack").click()
        wait_until(lambda: s1.alarm.indicator.mode is Mode.ACKNOWLEDGED, 15,
                   "the station's LED shows acknowledged")
        wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#cards .station-ack"), 15,
                   "the station's cmd.result on the card")
        assert card_state(driver) == "acknowledged"
        assert body.get_attribute("data-sound") == "armed", "acting must not silence the page"
        wait_until(lambda: body.get_attribute("data-ringing") == "0", 5, "tone stops")
        wait_until(lambda: "alarm-flash" not in (body.get_attribute("class") or ""), 5,
                   "flashing stops")
        driver.save_screenshot(str(shots / "3-acknowledged.png"))

        def dispatch(card: WebElement) -> None:
            card.find_element(By.NAME, "to").send_keys("派出所 李警官")
            card.find_element(By.CSS_SELECTOR, "button[value=dispatch]").click()

        on_card(driver, dispatch)
        wait_until(lambda: card_state(driver) == "dispatched", 15, "dispatched")
        assert "派出所 李警官" in card_text(driver)
        on_card(driver, lambda c: c.find_element(By.CSS_SELECTOR,
                                                 "button[value=on_scene]").click())
        wait_until(lambda: card_state(driver) == "on_scene", 15, "on scene")
        driver.save_screenshot(str(shots / "4-on-scene.png"))
        def resolve(card: WebElement) -> None:
            Select(card.find_element(By.NAME, "outcome")).select_by_value("genuine")
            card.find_element(By.CSS_SELECTOR, "button[value=resolve]").click()

        on_card(driver, resolve)
        wait_until(lambda: card_state(driver) is None, 15, "resolved: card gone")
        driver.save_screenshot(str(shots / "5-calm.png"))
        # Every change above came with its event: the page fetched no cards, it only
        # posted the officer's actions (and kept its one event stream).
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(function (e) {"
            " return new URL(e.name).pathname; });")
        assert "/cards" not in fetched, fetched
        assert [p for p in fetched if not p.startswith(("/static/", "/alarm/"))
                and p not in ("/events", "/favicon.ico")] == [], fetched
        assert len([p for p in fetched if p.startswith("/alarm/")]) == 4  # the four acts
        assert driver.execute_script("return window.pinganRenders;") >= 6
        assert driver.find_element(By.ID, "cards").text == "当前没有未处置的报警。"

        driver.get(f"{centre.url}/stats?by=station")
        table = driver.find_element(By.ID, "stats").text
        row = next(line for line in table.splitlines() if line.startswith("s1"))
        assert row.count(" s") >= 8, f"four phases with p50/p90 each: {row}"
        assert driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.b50")
        driver.save_screenshot(str(shots / "6-statistics.png"))

        s2.stop()
        driver.get(f"{centre.url}/stations")
        wait_until(lambda: "h-offline" in (driver.find_element(By.ID, "st-s2")
                                          .get_attribute("class") or "")
                   or driver.refresh(), 15, "s2 offline in the grid")
        driver.save_screenshot(str(shots / "7-stations.png"))
        driver.get(f"{centre.url}/handover")
        assert "交接班" in driver.page_source, "Chinese first, whatever the browser's language"
        changes = driver.find_element(By.TAG_NAME, "main").text
        for step in ("按下报警", "已升级", "已确认", "已派出", "已到场", "已处置"):
            assert step in changes, f"handover shows the {step} step"
        driver.save_screenshot(str(shots / "8-handover.png"))
        # English on one click.
        driver.find_element(By.CSS_SELECTOR, "button[name=language][value=en]").click()
        wait_until(lambda: "Shift handover" in driver.page_source, 10, "English")
        assert "交接班" not in driver.page_source
        driver.get(f"{centre.url}/")
        driver.save_screenshot(str(shots / "9-english.png"))
    finally:
        s1.stop()
        s2.stop()
        centre.stop()
        db.drop()
