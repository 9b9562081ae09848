"""A broadcast from the township to its villages, all real (issue 23): Mosquitto, the
served console, four simulated stations as their own processes with loudspeakers on the
null sink (each records what it played to its `speaker.raw`), and Debian's Chromium.

The officer composes the broadcast in the browser and sends it to all: one station is
offline (its session kept at the broker), one in quiet hours, one cut off by its own
panic siren. The results page shows exactly that, live; the offline station plays when
it returns; a second broadcast is stopped everywhere from the page."""

from __future__ import annotations

import re
import signal
import time
import uuid
import wave
from pathlib import Path
from typing import Any

import numpy as np
import requests
from browser_helpers import login, needs_chromium
from centre_helpers import Centre, database
from conftest import Daemon, station_toml, wait_until
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from edge.unit.control import request

pytestmark = needs_chromium

AUDIO = {"enabled": True, "output": "null", "sample_rate": 16000, "amp_warm_up_s": 0.0,
         "amp_idle_off_s": 0.1, "siren_s": 1.0}
VILLAGES = {"s1": "东村", "s2": "西村", "s3": "河口村", "s4": "山后村"}


class Sim:
    """One simulated station process; `start()` again after `stop()` is its return."""

    def __init__(self, tmp: Path, port: int, name: str, township: str,
                 **audio: Any) -> None:
        self.name = name
        self.data = tmp / name
        self.config = tmp / f"{name}.toml"
        self.config.write_text(station_toml(
            self.data, port, station=name, audio={**AUDIO, **audio},
            buttons={"panic_hold_s": 0.0, "bounce_s": 0.0}).replace(
            'township = "t01"', f'township = "{township}"', 1), encoding="utf-8")
        self.daemon: Daemon | None = None

    def start(self) -> Sim:
        self.daemon = Daemon(self.config, simulated=True)
        return self

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is None:
            self.daemon.proc.send_signal(signal.SIGTERM)
            self.daemon.finish(20)

    def loudness(self) -> float:
        """RMS of everything the loudspeaker played (0 when nothing was)."""
        raw = self.data / "speaker.raw"
        x = np.fromfile(raw, dtype="<i2").astype(np.float32) if raw.exists() else []
        return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def results(s: requests.Session, centre: Centre, bid: str) -> dict[str, Any]:
    time.sleep(0.05)
    got = s.get(f"{centre.url}/broadcast/results?id={bid}", timeout=10).json()
    return {r["station"]: r for r in got["rows"]} | {"": got}


def table(driver: Any) -> dict[str, str]:
    """The results table as the page shows it: row id -> result."""
    time.sleep(0.1)
    return driver.execute_script(  # type: ignore[no-any-return]
        "var out = {}; document.querySelectorAll('table.results tr[id]').forEach("
        "function (r) { out[r.id] = r.querySelector('.result').innerText; }); return out;")


def text(driver: Any, selector: str) -> str:
    """What an element shows; the page redraws the results every 2 s."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
        selector)


def online(s: requests.Session, centre: Centre) -> set[str]:
    """The stations the grid shows online."""
    time.sleep(0.2)
    page = s.get(f"{centre.url}/stations", timeout=10).text
    return set(re.findall(r'<tr class="h-online" id="st-([^"]+)"', page))


def test_a_broadcast_to_all_from_the_browser(tmp_path: Path, broker, chromium) -> None:  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township, villages=VILLAGES)
    sims = [Sim(tmp_path, broker.port, "s1", township),
            Sim(tmp_path, broker.port, "s2", township, quiet_start="00:00",
                quiet_end="23:59"),
            Sim(tmp_path, broker.port, "s3", township),
            Sim(tmp_path, broker.port, "s4", township)]
    s1, s2, s3, s4 = sims
    try:
        centre.start()
        for sim in sims:
            sim.start()
        s = centre.session("officer")
        wait_until(lambda: online(s, centre) == {"s1", "s2", "s3", "s4"}, 60,
                   "four stations on the grid")
        s4.stop()  # offline: its session stays at the broker
        wait_until(lambda: "s4" not in online(s, centre), 20, "s4 offline")

        driver = chromium()
        login(driver, centre, "officer")
        driver.find_element(By.LINK_TEXT, "广播").click()
        form = wait_until(lambda: driver.find_elements(By.ID, "compose"), 10, "compose")[0]
        form.find_element(By.ID, "text").send_keys("今晚八点在村委会开会，请大家准时参加。")
        repeat = form.find_element(By.NAME, "repeat")
        repeat.clear()
        repeat.send_keys("3")
        form.find_element(By.ID, "send").click()  # to all stations: the default
        wait_until(lambda: "/broadcast?id=" in driver.current_url, 15, "the results page")
        bid = driver.current_url.split("id=")[1]

        # s3 is cut off by its own panic siren while it speaks.
        wait_until(lambda: results(s, centre, bid)["s3"]["result"] == "started", 30,
                   "s3 speaking")
        request(s3.data / "control.sock", {"op": "press", "button": "panic"})
        wait_until(lambda: results(s, centre, bid)["s3"]["result"] == "finished", 40,
                   "s3 played it again after the siren")
        got = wait_until(lambda: (r := results(s, centre, bid))["s1"]["result"] == "finished"
                         and r, 30, "s1 played it")
        assert (got["s2"]["result"], got["s2"]["code"]) == ("refused", "quiet_hours")
        assert got["s4"]["result"] == "offline"
        assert got["s1"]["steps"] == ["started", "finished"]
        assert "preempted" in got["s3"]["steps"] and got["s3"]["steps"][0] == "started"
        assert [x for x in ("s1", "s2", "s3", "s4") if got[x]["played"]] == ["s1", "s3"]

        # The page shows exactly that, live, in Chinese.
        summary = "4 个站中 2 个已播放；1 个离线，1 个拒绝：静默时段"
        wait_until(lambda: text(driver, "#summary") == summary, 10, "the summary on the page")
        wait_until(lambda: table(driver) == {
            "r-s1": "已播放", "r-s2": "已拒绝：静默时段", "r-s3": "已播放",
            "r-s4": "等待中：站点离线，指令已在服务器排队"}, 10, "the table on the page")
        assert "被打断" in text(driver, "#r-s3 .steps")
        assert s1.loudness() > 0.01 and s3.loudness() > 0.01 and s2.loudness() == 0.0

        # The offline station returns: the broker hands it the broadcast, it plays.
        s4.start()
        wait_until(lambda: table(driver).get("r-s4") == "已播放", 60, "s4 played on its return")
        assert text(driver, "#summary") == "4 个站中 3 个已播放；1 个拒绝：静默时段"
        assert s4.loudness() > 0.01

        # A recording, heard in the browser before it goes (clip.put chunks, then the
        # play), to one station; then stopped everywhere from its page.
        wav = tmp_path / "notice.wav"
        with wave.open(str(wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            t = np.arange(16000 * 8) / 16000
            w.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
        driver.get(f"{centre.url}/broadcasts")
        form = driver.find_element(By.ID, "compose")
        form.find_element(By.ID, "clip").send_keys(str(wav))
        wait_until(lambda: driver.execute_script(
            "var p = document.getElementById('preview'); return !p.hidden && "
            "p.src.startsWith('blob:') && p.duration > 7.9;"), 10, "the preview ready to play")
        assert form.find_element(By.CSS_SELECTOR, "input[name=content][value=clip]"
                                 ).is_selected()
        form.find_element(By.CSS_SELECTOR, "input[name=target][value=station]").click()
        Select(form.find_element(By.NAME, "station")).select_by_value("s1")
        form.find_element(By.ID, "send").click()
        wait_until(lambda: "/broadcast?id=" in driver.current_url and
                   bid not in driver.current_url, 15, "the second results page")
        second = driver.current_url.split("id=")[1]
        assert list(results(s, centre, second)) == ["s1", ""]
        assert s.get(f"{centre.url}/broadcast/clip?id={second}", timeout=10
                     ).content == wav.read_bytes()  # the page's player
        wait_until(lambda: results(s, centre, second)["s1"]["result"] == "started", 20,
                   "s1 playing the recording")
        driver.find_element(By.CSS_SELECTOR, "#stop button").click()
        wait_until(lambda: table(driver).get("r-s1") == "已停止", 20, "stopped on the page")
        assert "已全部停止" in text(driver, "#results")
        audit = centre.python(
            "from pingan_centre.console.models import AuditEntry\n"
            "print(json.dumps([[a.action, a.target] for a in AuditEntry.objects.filter("
            "action__startswith='broadcast.').order_by('at', 'id')]))")
        assert audit == [["broadcast.send", f"broadcast:{bid}"],
                         ["broadcast.send", f"broadcast:{second}"],
                         ["broadcast.stop", f"broadcast:{second}"]]
        # Bad input from the form: a clear refusal, nothing sent.
        r = centre.post(s, "/broadcasts/send", content="text", text="开会", target="all",
                        expires="tomorrow")
        assert r.status_code == 400 and "不是日期时间" in r.text
    finally:
        for sim in sims:
            sim.stop()
        centre.stop()
        db.drop()
