"""Station health at the township: a real station's `…/health` reaches a real centre,
is validated and stored (7 days, a retained copy not twice), the station grid shows the
readings, thresholds turn them into problems that say what to do (in Chinese and in
English), and the station page draws the last 7 days as inline SVG."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from centre_helpers import Centre, Database, database, station
from conftest import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge.clock import now_iso


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield from database("sqlite", tmp_path)


def report(township: str, name: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "station": name, "township": township, "ts": now_iso(), "version": "0.1.0",
        "clock_synced": True, "uptime_s": 7200, "cpu_temp_c": 51.5, "load1": 0.3,
        "mem_avail_mb": 700, "disk_free_mb": 9000, "disk_total_mb": 14000,
        "outbox_pending": 0, "outbox_oldest_s": None, "reconnects": 0, "throttled": 0,
        "modem": {"state": "ok", "model": "EC25", "iccid": None, "reg": "home",
                  "operator": "CHN-CT", "tech": "LTE", "csq_dbm": -71, "rsrp": None,
                  "rsrq": None, "sinr": None},
        "sms_held_back": 0}
    return {**base, **fields}


def publish(port: int, topic: str, body: bytes) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}",
                    protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, body, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


class Words(HTMLParser):
    """The words a person reads in the health parts of a page: outside <script>/<style>
    and outside translate="no" (figures, units, what a station calls itself)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip: list[bool] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("link", "meta", "input", "br", "img"):
            self._skip.append(tag in ("script", "style") or dict(attrs).get("translate") == "no")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ("link", "meta", "input", "br", "img") and self._skip:
            self._skip.pop()

    def handle_data(self, data: str) -> None:
        if not any(self._skip):
            self.parts.append(data)


def english_words(html: str) -> set[str]:
    """English words on a page meant to be Chinese."""
    w = Words()
    w.feed(html)
    found = re.findall(r"[A-Za-z][A-Za-z']+", " ".join(w.parts))
    return set(found) - {"English", "officer"}  # the switch; the login name (data)


def test_health_reaches_the_grid_and_thresholds_say_what_to_do(tmp_path, db, broker):  # type: ignore[no-untyped-def]
    township = f"tw{uuid.uuid4().hex[:8]}"
    centre = Centre(tmp_path, db, broker.port, township).start()
    st = station(tmp_path, broker.port, "s1", township, health={"interval_s": 1})
    try:
        # A real station's telemetry is stored, and shown on the grid.
        wait_until(lambda: db.rows("SELECT count(*) FROM console_healthreport "
                                   "WHERE station_id = 's1'")[0][0] >= 2, 30,
                   "health reports stored")
        (data,) = db.rows("SELECT data FROM console_healthlatest WHERE station_id = 's1'")[0]
        assert json.loads(data)["township"] == township
        s = centre.session("officer")
        grid = s.get(f"{centre.url}/stations", timeout=10).text
        assert 'href="/station?id=s1"' in grid and "MB" in grid

        # Readings over the thresholds, as a station would send them.
        bad = report(township, "s2", cpu_temp_c=85.0, throttled=0x50001,
                     disk_free_mb=700, outbox_oldest_s=900, outbox_pending=12,
                     clock_synced=False,
                     modem={"state": "ok", "model": "EC25", "iccid": None,
                            "reg": "searching", "operator": None, "tech": None,
                            "csq_dbm": None, "rsrp": None, "rsrq": None, "sinr": None})
        topic = f"pingan/v1/{township}/s2/health"
        publish(broker.port, topic, json.dumps(bad).encode())
        wait_until(lambda: db.rows("SELECT count(*) FROM console_healthlatest "
                                   "WHERE station_id = 's2'")[0][0], 15, "s2 health")
        publish(broker.port, topic, json.dumps(bad).encode())  # the same report again
        s.post(f"{centre.url}/i18n/setlang/", data={
            "language": "en", "csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=10)
        en = text(s.get(f"{centre.url}/stations", timeout=10).text)
        for words in ("disk almost full (5 % free)", "replace the SD card",
                      "too hot (85 °C)", "ventilation", "under-voltage",
                      "replace the power supply", "no mobile signal", "check the SIM",
                      "events waiting 15 min", "clock not synced", "NTP",
                      "12 · oldest 900 s"):
            assert words in en, words
        s.post(f"{centre.url}/i18n/setlang/", data={
            "language": "zh-hans", "csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=10)
        zh_html = s.get(f"{centre.url}/stations", timeout=10).text
        zh = text(zh_html)
        for words in ("存储空间将满（剩余 5 %）", "温度过高（85 °C）", "供电电压不足",
                      "无移动网络信号", "正在搜索网络", "事件已积压 15 分钟", "时钟未同步"):
            assert words in zh, words
        assert english_words(zh_html.split('class="tele"', 1)[1]) == set()
        page = s.get(f"{centre.url}/station?id=s2", timeout=10).text
        assert english_words(page) == set()
        assert db.rows("SELECT count(*) FROM console_healthreport "
                       "WHERE station_id = 's2'")[0][0] == 1, "a retained copy is stored once"

        # A malformed report is kept aside, not stored.
        publish(broker.port, topic, b'{"station": "s2", "cpu_temp_c": "hot"}')
        wait_until(lambda: db.rows("SELECT count(*) FROM console_quarantined "
                                   "WHERE topic = ?", topic)[0][0], 15, "quarantined")

        # The station page: the last 7 days as inline SVG, nothing from elsewhere.
        page = s.get(f"{centre.url}/station?id=s2", timeout=10)
        assert page.status_code == 200
        assert page.text.count("<svg") == 6 and "<polyline" in page.text
        assert "http://" not in page.text and "https://" not in page.text
        assert s.get(f"{centre.url}/station?id=nope", timeout=10).status_code == 404
    finally:
        st.stop()
        centre.stop()


def test_history_is_kept_seven_days(tmp_path, db, broker):  # type: ignore[no-untyped-def]
    centre = Centre(tmp_path, db, broker.port, "t01")
    got = centre.python("""
from datetime import timedelta
from django.utils import timezone
from pingan_centre.console import telemetry
from pingan_centre.console.models import HealthReport, Station
Station.objects.create(name="s1", township="t01")
now = timezone.now()
def rep(ts):
    return {"station": "s1", "township": "t01", "ts": ts, "clock_synced": True}
telemetry.store(rep("a"), now - timedelta(days=8))
telemetry.store(rep("b"), now - timedelta(days=6))
telemetry.store(rep("c"), now)
print(json.dumps(sorted(HealthReport.objects.values_list("ts", flat=True))))
""")
    assert got == ["b", "c"]


def test_every_stored_station_id_has_a_working_page(tmp_path, db, broker):  # type: ignore[no-untyped-def]
    """Ids stored before ingest checked the patterns may hold "/" or a newline."""
    centre = Centre(tmp_path, db, broker.port, "t01")
    centre.python("""
from pingan_centre.console.models import Station
Station.objects.create(name="old/one\\n<b>", township="t01")
print("null")
""")
    centre.start()
    try:
        s = centre.session("officer")
        grid = s.get(f"{centre.url}/stations", timeout=10)
        assert grid.status_code == 200
        href = re.search(r'href="(/station\?id=[^"]+)"', grid.text)
        assert href is not None
        page = s.get(centre.url + href.group(1).replace("&amp;", "&"), timeout=10)
        assert page.status_code == 200 and "old/one" in page.text and "<b>" not in page.text
    finally:
        centre.stop()
