"""Live voice (喊话) from the console, all real (issue 23): Debian's Chromium with a fake
microphone that reads a known tone sequence, the served console (its WebSocket), real
Mosquitto and two simulated stations as their own processes with loudspeakers on the
null sink. The officer holds the button on the page; both stations' `speaker.raw` hold
the tones in the order spoken, the page shows each loudspeaker's report, and the
mouth → loudspeaker delay the stations measured is printed (reported, not asserted)."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websocket
from audio_helpers import runs
from browser_helpers import login, needs_chromium
from centre_helpers import Centre, database
from conftest import wait_until
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from test_broadcast_system import Sim, online

from pingan_sim import voice as mouth

pytestmark = needs_chromium

FREQS = list(mouth.TONES)
RATE = 16000


def cyclic(heard: list[float]) -> bool:
    """`heard` follows the microphone's loop 500 → 800 → 1200 → 500 …, from anywhere."""
    if not heard:
        return False
    start = FREQS.index(heard[0])
    return heard == list(itertools.islice(itertools.cycle(FREQS[start:] + FREQS[:start]),
                                          len(heard)))


def test_live_voice_from_the_browser(tmp_path: Path, broker, chromium) -> None:  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township, villages={"s1": "东村", "s2": "西村"})
    audio = {"sample_rate": RATE, "prompts": False}
    sims = [Sim(tmp_path, broker.port, "s1", township, **audio),
            Sim(tmp_path, broker.port, "s2", township, **audio),
            Sim(tmp_path, broker.port, "s3", township, **audio)]
    # The microphone: the three tones, 0.3 s each with 0.2 s between, over and over.
    wav = mouth.write_wav(tmp_path / "mic.wav", mouth.tone_sequence(tuple(FREQS)))
    try:
        centre.start()
        for sim in sims:
            sim.start()
        s = centre.session("officer")
        wait_until(lambda: online(s, centre) == {"s1", "s2", "s3"}, 60, "stations online")

        driver = chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                          f"--use-file-for-fake-audio-capture={wav}",
                          "--autoplay-policy=no-user-gesture-required")
        login(driver, centre, "officer")
        driver.find_element(By.LINK_TEXT, "喊话").click()
        talk = wait_until(lambda: [b for b in driver.find_elements(By.ID, "talk")
                                   if b.is_enabled()], 15, "the button ready")[0]
        assert driver.find_element(By.ID, "voice-state").text == "就绪：按住按钮说话。"
        form = driver.find_element(By.ID, "voice")
        form.find_element(By.CSS_SELECTOR, "input[name=target][value=stations]").click()
        for name in ("s1", "s2"):  # s3 is not spoken to
            form.find_element(By.CSS_SELECTOR, f"input[name=stations][value={name}]").click()

        ActionChains(driver).click_and_hold(talk).perform()
        wait_until(lambda: driver.find_element(By.ID, "voice-results").get_attribute(
            "data-session"), 10, "the session started")
        time.sleep(3.5)
        ActionChains(driver).release(talk).perform()
        session = driver.find_element(By.ID, "voice-results").get_attribute("data-session")

        def rows() -> dict[str, Any]:
            got = s.get(f"{centre.url}/voice/results?session={session}", timeout=10).json()
            return {r["station"]: r for r in got["rows"]}

        done = wait_until(lambda: (r := rows()) and all(
            r[n]["result"] == "finished" for n in ("s1", "s2")) and r, 20, "both played")
        assert list(done) == ["s1", "s2"]
        # The page shows each loudspeaker's report, in Chinese.
        wait_until(lambda: driver.execute_script(  # read at once: redrawn every second
            "return Array.from(document.querySelectorAll('table.voice-results td.result'))"
            ".map(function (e) { return e.innerText; });") == ["已播放", "已播放"], 10,
            "the table on the page")
        for name in ("s1", "s2"):
            sim = next(x for x in sims if x.name == name)
            x = np.fromfile(sim.data / "speaker.raw", dtype="<i2").astype(np.float32) / 32768
            heard = [f for f, secs in runs(x, RATE, FREQS) if secs >= 0.1]
            # 3.5 s held: at least five of the tones, in the microphone's order.
            assert len(heard) >= 5 and cyclic(heard), (name, heard)
            assert done[name]["steps"][0] == "started" and done[name]["played_s"] >= 2.5
        assert sims[2].loudness() == 0.0  # s3 was not spoken to
        print("\nlive voice, Chromium → console → Mosquitto → station (loopback): "
              + "; ".join(f"{n}: delay p50 {done[n]['delay_ms_p50']} ms, p95 "
                          f"{done[n]['delay_ms_p95']} ms, underruns {done[n]['underruns']}, "
                          f"dropped {done[n]['dropped_ms']} ms" for n in ("s1", "s2")))
        audit = centre.python(
            "from pingan_centre.console.models import AuditEntry\n"
            "print(json.dumps([[a.action, a.detail.get('stations')] for a in "
            "AuditEntry.objects.filter(action__startswith='voice.').order_by('at', 'id')]))")
        assert audit == [["voice.start", ["s1", "s2"]], ["voice.end", None]]
        # Only an officer logged in on this console's own page may speak: without the
        # session cookie, or from another site's page with it, the socket is refused.
        ws_url = centre.url.replace("http://", "ws://") + "/voice/ws"
        cookie = f"sessionid={s.cookies['sessionid']}"
        for kwargs in ({"origin": centre.url},
                       {"origin": "http://evil.example", "cookie": cookie}):
            with pytest.raises(websocket.WebSocketBadStatusException):
                websocket.create_connection(ws_url, timeout=10, **kwargs)
        ok = websocket.create_connection(ws_url, timeout=10, origin=centre.url, cookie=cookie)
        ok.send(json.dumps({"start": {"target": "station", "chosen": ["nobody"]}}))
        assert "error" in json.loads(ok.recv())
        ok.close()
    finally:
        for sim in sims:
            sim.stop()
        centre.stop()
        db.drop()
