"""The clip library (issue 23 item 4), all real: Mosquitto, the served console, five
simulated stations as their own processes. A recording is uploaded once and sent to all
five; one station is stopped in the middle of its upload and comes back. Every station
ends with the whole clip (its sha256), the console's per-station view says so, and what
each station reports in its state agrees. Then a clip is deleted from one station, and a
broadcast of the library clip plays it by id where it is held and sends it first where
it is not. A file no station could play is refused at upload, with the reason."""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import requests
import soundfile
from browser_helpers import login, needs_chromium
from centre_helpers import Centre, database
from conftest import wait_until
from selenium.webdriver.common.by import By
from test_broadcast_system import Sim, online

pytestmark = needs_chromium

NAMES = ["k1", "k2", "k3", "k4", "k5"]


def recording(seconds: float) -> bytes:
    """A WAV of a rising tone: 16 kHz mono, 32 KB a second."""
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    soundfile.write(buf, (0.3 * np.sin(2 * np.pi * (300 + 10 * t) * t)).astype(np.float32),
                    16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def upload(centre: Centre, s: requests.Session, filename: str, data: bytes,
           **fields: Any) -> requests.Response:
    return s.post(f"{centre.url}/clips/upload", files={"file": (filename, data, "audio/wav")},
                  data={**fields, "csrfmiddlewaretoken": s.cookies["csrftoken"]},
                  headers={"Accept": "application/json"}, timeout=30)


def view(centre: Centre, s: requests.Session, cid: str) -> dict[str, dict[str, Any]]:
    """The console's per-station view of the clip, as the page's progress bars show it."""
    time.sleep(0.05)
    got = s.get(f"{centre.url}/clips/progress", timeout=10).json()
    [clip] = [c for c in got["clips"] if c["id"] == cid]
    return {h["station"]: h for h in clip["stations"]}


def held(sim: Sim, cid: str) -> str | None:
    """The sha256 of the clip in the station's library (None: not there)."""
    path = sim.data / "clips" / f"{cid}.clip"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def test_a_clip_to_five_stations_one_cut_mid_upload(tmp_path: Path, broker, chromium) -> None:  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township)
    sims = {n: Sim(tmp_path, broker.port, n, township) for n in NAMES}
    try:
        centre.start()
        for sim in sims.values():
            sim.start()
        s = centre.session("officer")
        wait_until(lambda: online(s, centre) == set(NAMES), 60, "five stations online")

        # What no station could play is refused at upload, saying why, in Chinese.
        bad = upload(centre, s, "notice.wav", b"RIFF" + bytes(3000), target="all")
        assert bad.status_code == 400 and "站点无法播放此文件" in bad.text

        data = recording(36)  # 1.15 MB: 103 chunks
        digest = hashlib.sha256(data).hexdigest()
        r = upload(centre, s, "防汛通知.wav", data, name="防汛通知", target="all")
        assert r.ok, r.text
        cid = r.json()["id"]
        assert cid == f"lib-{digest[:12]}" and r.json()["stations"] == NAMES

        # k3 is stopped in the middle of its upload: its partial file exists.
        part = sims["k3"].data / "clips" / ".incoming" / f"{cid}.part"
        wait_until(lambda: part.exists() and part.stat().st_size > 0, 30, "k3 receiving")
        sims["k3"].stop()
        assert held(sims["k3"], cid) is None, "stopped before the clip was whole"
        mid = view(centre, s, cid)["k3"]
        assert mid["status"] == "partial" and mid["acked"] < mid["chunks"] == 103

        others = [n for n in NAMES if n != "k3"]
        wait_until(lambda: all(view(centre, s, cid)[n]["status"] == "complete"
                               for n in others), 60, "the four others complete")
        assert view(centre, s, cid)["k3"]["status"] == "partial"
        assert not view(centre, s, cid)["k3"]["online"]

        # The officer watches the library page in the browser.
        driver = chromium()
        login(driver, centre, "officer")
        driver.find_element(By.LINK_TEXT, "音频库").click()
        wait_until(lambda: driver.find_elements(By.ID, f"cp-{cid}-k3"), 10, "the library")
        driver.execute_script("window.notReloaded = true;")

        def row(name: str) -> tuple[str, str, str]:
            return tuple(driver.execute_script(  # type: ignore[return-value]
                "var r = document.getElementById(arguments[0]); return [r.className, "
                "r.querySelector('.status').innerText, r.querySelector('.count').innerText];",
                f"cp-{cid}-{name}"))

        assert row("k3")[0] == "partial" and "部分 · 离线" in row("k3")[1]
        assert row("k1") == ("complete", "完整", "103/103")

        # k3 returns: it discarded the partial upload, the console sends it again.
        sims["k3"].start()
        wait_until(lambda: view(centre, s, cid)["k3"]["status"] == "complete", 60,
                   "k3 complete after its return")
        wait_until(lambda: row("k3") == ("complete", "完整", "103/103"), 10,
                   "the page shows it, live")
        assert driver.execute_script("return window.notReloaded === true;")
        assert {n: held(sims[n], cid) for n in NAMES} == {n: digest for n in NAMES}
        final = view(centre, s, cid)
        assert {n: (h["status"], h["acked"], h["chunks"]) for n, h in final.items()} == {
            n: ("complete", 103, 103) for n in NAMES}
        log = centre.log.read_text(encoding="utf-8")
        assert re.search(r'"clip\.restart".*"station": "k3"', log), "k3 restarted"
        assert not re.search(r'"clip\.restart".*"station": "k[1245]"', log)
        # What the stations themselves report (their state's `clips`) agrees.
        wait_until(lambda: centre.python(
            "from pingan_centre.console.models import Station\n"
            "print(json.dumps({s.name: s.clips for s in Station.objects.all()}))"
        ) == {n: {cid: digest[:16]} for n in NAMES}, 20, "each station's state lists it")
        # The page shows it, in Chinese, progress bars full.
        page = s.get(f"{centre.url}/clips", timeout=10).text
        for n in NAMES:
            row = re.search(rf'<tr id="cp-{cid}-{n}"[^>]*class="(\w+)">(.*?)</tr>', page, re.S)
            assert row and row.group(1) == "complete", n
            assert "完整" in row.group(2) and "103/103" in row.group(2)

        # Deleted from k5: gone there, and the console says so.
        assert centre.post(s, "/clips/delete", clip=cid, station="k5").ok
        wait_until(lambda: view(centre, s, cid)["k5"]["status"] == "missing", 20,
                   "k5 missing")
        assert held(sims["k5"], cid) is None and held(sims["k1"], cid) == digest

        # A broadcast of the library clip to k1 (holds it) and k5 (does not): k1 is sent
        # the play alone, k5 the clip first, then the play.
        r = centre.post(s, "/broadcasts/send", content="library", library_clip=cid,
                        target="stations", stations=["k1", "k5"])  # type: ignore[arg-type]
        assert r.ok, r.text
        bid = r.json()["id"]
        wait_until(lambda: all(
            x["result"] in ("started", "finished") for x in s.get(
                f"{centre.url}/broadcast/results?id={bid}", timeout=10).json()["rows"]), 60,
            "both playing the library clip")
        assert held(sims["k5"], cid) == digest
        sent = centre.python(
            "from pingan_centre.console.models import Event\n"
            "print(json.dumps(sorted({(e.station_id, e.payload['cmd_id'].split(':')[2]) "
            "for e in Event.objects.filter(type='cmd.result', "
            "payload__cmd_id__startswith='cl:')})))")
        assert ["k1", "1"] in sent and not any(st == "k1" and a != "1" for st, a in sent), \
            "k1 was not sent the clip again"
        assert any(st == "k5" and a not in ("1", "2") for st, a in sent), \
            "k5 was sent it again (attempt 2 was the delete)"
        assert centre.post(s, "/broadcast/stop", id=bid).ok
    finally:
        for sim in sims.values():
            sim.stop()
        centre.stop()
        db.drop()
