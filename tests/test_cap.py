"""CAP 1.2 alerts imported as broadcasts (issue 23 item 6), in the console process.

The sample messages are written here after the standard's own examples (CAP 1.2,
Appendix A: the thunderstorm warning, its multilingual form, an update, a cancel), with
GB/T 2260 geocodes for this township's villages. Each is read by the real parser against
the vendored OASIS schema, and acts through the console's broadcasts: the commands each
station would be sent, the stops, the audit log and the pages are checked."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import console_inproc as console
import pytest
from conftest import wait_until
from test_console_language import offending, visible

T = console.TOWNSHIP
# Villages of this test (their own names: other tests' stations do not match).
AREAS = {"柳村": "420102001001", "桃村": "420102001002", "杏村": "420103005001"}
STATIONS = {"cap1": "柳村", "cap2": "柳村", "cap3": "桃村", "cap4": "杏村"}
XSD_SHA256 = "b7798ef25868b068c97b268bda02d067c7d4ba9373adc5638bf37105804ee723"


def when(delta_h: float) -> str:
    """A CAP dateTime (no fractions, explicit offset), `delta_h` hours from now."""
    t = datetime.now().astimezone() + timedelta(hours=delta_h)
    return t.replace(microsecond=0).isoformat()


def info(lang: str, *, severity: str = "Severe", expires: float = 3, geocode: str = "420102",
         headline: str = "", description: str = "", instruction: str = "",
         onset: float | None = None) -> str:
    onset_xml = f"<onset>{when(onset)}</onset>" if onset is not None else ""
    return f"""
  <info>
    <language>{lang}</language>
    <category>Met</category>
    <event>SEVERE THUNDERSTORM</event>
    <responseType>Shelter</responseType>
    <urgency>Immediate</urgency>
    <severity>{severity}</severity>
    <certainty>Observed</certainty>
    <eventCode><valueName>SAME</valueName><value>SVR</value></eventCode>
    {onset_xml}
    <expires>{when(expires)}</expires>
    <senderName>武汉市气象台</senderName>
    <headline>{headline}</headline>
    <description>{description}</description>
    <instruction>{instruction}</instruction>
    <area>
      <areaDesc>江岸区</areaDesc>
      <polygon>38.47,-120.14 38.34,-119.95 38.52,-119.74 38.62,-119.89 38.47,-120.14</polygon>
      <geocode><valueName>GB/T 2260</valueName><value>{geocode}</value></geocode>
    </area>
  </info>"""


def cap(identifier: str, *, status: str = "Actual", msg_type: str = "Alert",
        references: str = "", sent: str = "2026-12-06T08:00:00+08:00", **fields: Any) -> bytes:
    """A thunderstorm warning after CAP 1.2 A.2, in Chinese and English (as A.4)."""
    refs = f"<references>{references}</references>" if references else ""
    zh = info("zh-CN", headline="雷雨大风红色预警",
              description="江岸区将出现雷雨大风，阵风十级以上。",
              instruction="请立即进入室内躲避，远离河道。", **fields)
    en = info("en-US", headline="SEVERE THUNDERSTORM WARNING",
              description="Severe thunderstorms with gusts over force 10 in Jiang'an.",
              instruction="Take shelter indoors now; keep away from the river.", **fields)
    body = "" if msg_type == "Cancel" else zh + en
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>whqxt@cma.gov.cn</sender>
  <sent>{sent}</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {refs}{body}
</alert>""".encode()


@pytest.fixture(scope="module")
def township() -> None:
    console.setup()
    from pingan_centre.console.models import Station
    for name, village in STATIONS.items():
        Station.objects.update_or_create(name=name, defaults={
            "township": T, "village": village, "online": True})


def take(data: bytes, **cfg: Any) -> Any:
    """What the upload view and the watched folder do with a file."""
    from django.utils import timezone

    from pingan_centre.console.cap.imports import take as take_
    from pingan_centre.console.config import CapConfig
    from pingan_centre.console.link import UNLINKED
    return take_(data, source="test.xml", by="officer", now=timezone.now(),
                 cfg=CapConfig(areas=AREAS, **cfg), effects=UNLINKED)


def plays(bid: str) -> dict[str, dict[str, Any]]:
    from pingan_centre.console.models import Command
    return {c.station_id: c.payload for c in Command.objects.filter(
        id__startswith=f"bc:{bid}:", cmd="broadcast.play")}


def audited(row: Any) -> dict[str, Any]:
    from pingan_centre.console.models import AuditEntry
    entry = AuditEntry.objects.get(action="cap.import", target=f"cap:{row.pk}")
    return dict(entry.detail)


def reasons(row: Any) -> tuple[str, str]:
    from pingan_centre.console.words import shown
    return shown(row.reason, "zh-hans"), shown(row.reason, "en")


def test_the_vendored_schema_is_the_official_one() -> None:
    from pingan_centre.console.cap.alert import XSD
    assert hashlib.sha256(XSD.read_bytes()).hexdigest() == XSD_SHA256


def test_alert_update_cancel(township: None) -> None:
    from pingan_centre.console.models import Broadcast, Command

    # Alert: to the villages under 420102 (柳村, 桃村), not 杏村 (420103); spoken in Chinese.
    alert = take(cap("WH-20261206-001"))
    assert (alert.outcome, alert.msg_type, alert.drill) == ("broadcast", "Alert", False)
    sent = plays(alert.broadcast_id)
    assert sorted(sent) == ["cap1", "cap2", "cap3"]
    p = sent["cap1"]
    assert p["text"] == "江岸区将出现雷雨大风，阵风十级以上。 请立即进入室内躲避，远离河道。"
    assert (p["priority"], p["repeat"], "not_before" in p) == ("emergency", 2, False)
    b = Broadcast.objects.get(pk=alert.broadcast_id)
    assert b.expires is not None and timedelta(hours=2.9) < b.expires - alert.received_at < (
        timedelta(hours=3.1))
    assert alert.text_en.startswith("Severe thunderstorms with gusts")
    assert reasons(alert) == ("已播往 3 个站点（柳村, 桃村）", "sent to 3 station(s) (柳村, 桃村)")
    detail = audited(alert)
    assert (detail["outcome"], detail["broadcast"], detail["identifier"]) == (
        "broadcast", alert.broadcast_id, "WH-20261206-001")

    # The same message again: never a second broadcast.
    again = take(cap("WH-20261206-001"))
    assert (again.outcome, again.broadcast_id) == ("ignored", None)

    # Update (downgraded, onset ahead, now only 柳村): the alert stops, the update plays.
    ref = "whqxt@cma.gov.cn,WH-20261206-001,2026-12-06T08:00:00+08:00"
    update = take(cap("WH-20261206-002", msg_type="Update", references=ref,
                      sent="2026-12-06T09:00:00+08:00", severity="Moderate",
                      geocode="420102001001", onset=1))
    assert (update.outcome, update.stopped) == ("broadcast", [alert.broadcast_id])
    assert Broadcast.objects.get(pk=alert.broadcast_id).stopped_at is not None
    stops = {c.station_id: c.payload["broadcast_id"] for c in Command.objects.filter(
        id__startswith=f"bs:{alert.broadcast_id}:")}
    assert stops == {s: f"bc:{alert.broadcast_id}:{s}" for s in ("cap1", "cap2", "cap3")}
    sent = plays(update.broadcast_id)
    assert sorted(sent) == ["cap1", "cap2"]
    assert sent["cap1"]["priority"] == "normal" and "not_before" in sent["cap1"]
    assert reasons(update)[1] == "sent to 2 station(s) (柳村); replaces 1 broadcast(s)"

    # Cancel (referencing both, as CAP asks): what is still playing stops.
    cancel = take(cap("WH-20261206-003", msg_type="Cancel", sent="2026-12-06T10:00:00+08:00",
                      references=f"{ref} whqxt@cma.gov.cn,WH-20261206-002,"
                      "2026-12-06T09:00:00+08:00"))
    assert (cancel.outcome, cancel.stopped, cancel.broadcast_id) == (
        "cancelled", [update.broadcast_id], None)
    assert Broadcast.objects.get(pk=update.broadcast_id).stopped_at is not None
    assert audited(cancel)["stopped"] == [update.broadcast_id]
    # A cancel for an alert never played here changes nothing, and says so.
    nothing = take(cap("WH-X", msg_type="Cancel", references="a@b,nope,2026-12-06T10:00:00+08:00"))
    assert nothing.outcome == "ignored"
    assert reasons(nothing)[1] == ("the alerts it references were not played here: "
                                   "nothing to cancel")


def test_expired_system_draft_and_drills(township: None) -> None:
    from pingan_centre.console.models import Broadcast
    before = Broadcast.objects.count()
    expired = take(cap("WH-OLD", expires=-1))
    assert (expired.outcome, reasons(expired)) == ("ignored", (
        "警报已过期，不播放", "the alert has expired: not played"))
    for status in ("System", "Draft"):
        assert take(cap(f"WH-{status}", status=status)).outcome == "ignored"
    # Exercise: not where drills are not allowed; marked as a drill where they are.
    refused = take(cap("WH-EX-1", status="Exercise"))
    assert (refused.outcome, refused.drill) == ("ignored", True)
    assert "cap.allow_drills" in reasons(refused)[1]
    assert Broadcast.objects.count() == before  # none of these played
    drill = take(cap("WH-EX-2", status="Exercise", severity="Minor"), allow_drills=True)
    assert (drill.outcome, drill.drill) == ("broadcast", True)
    assert plays(drill.broadcast_id)["cap3"]["text"].startswith("演习：江岸区将出现雷雨大风")
    assert audited(drill)["drill"] is True
    # Marked on the broadcasts list and on the CAP page, in each language.
    for lang, word in (("zh-hans", "演习"), ("en", "drill")):
        page = console.client("officer", lang).get("/broadcasts").content.decode()
        row = page[page.index(f'id="bc-{drill.broadcast_id}"'):]
        assert f'<b class="drill">{word}</b>' in row[:row.index("</tr>")]


BAD = {
    "not XML": (b"<alert xmlns='urn:oasis:names:tc:emergency:cap:1.2'><identifier>x",
                "不是有效的 XML（第 1 行第 65 列）", "not well-formed XML (line 1, column 65)"),
    "entities": (b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">'
                 b"]><alert>&x;</alert>", "文件含有文档类型定义或实体声明，为安全起见拒收",
                 "the file holds a DTD or entity declarations: refused for safety"),
    "CAP 1.1": (cap("A").replace(b"cap:1.2", b"cap:1.1"), "不是 CAP 1.2 警报消息",
                "not a CAP 1.2 alert message"),
    "schema": (cap("B").replace(b"<severity>Severe", b"<severity>Huge"),
               "不符合 CAP 1.2 标准（官方模式校验未通过）",
               "not valid CAP 1.2 (the official XSD says no)"),
    "unknown area": (cap("C", geocode="110101"),
                     "警报的地区不属于本乡镇的任何村（或这些村没有站点）",
                     "the alert's area is none of this township's villages (or they have no "
                     "station)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_rejections_say_why_in_both_languages(township: None, case: str) -> None:
    from pingan_centre.console.models import Broadcast
    before = Broadcast.objects.count()
    data, zh, en = BAD[case]
    row = take(data)
    assert (row.outcome, reasons(row)) == ("rejected", (zh, en))
    assert Broadcast.objects.count() == before
    assert audited(row)["outcome"] == "rejected"
    if case == "schema":
        assert row.detail == ("/alert/info[1]/severity: value must be one of ['Extreme', "
                              "'Severe', 'Moderate', 'Minor', 'Unknown']")
    if case == "unknown area":
        assert row.detail == "geocode 110101"
    # The operator's page shows it, each language on its own.
    for lang, words in (("zh-hans", zh), ("en", en)):
        page = console.client("officer", lang).get("/cap").content.decode()
        row_html = page[page.index(f'id="cap-{row.pk}"'):]
        row_html = row_html[:row_html.index("</tr>")]
        assert words.replace("'", "&#x27;") in row_html
        assert offending(visible(page), lang, [*AREAS, *STATIONS, *console.ROLES]) == []


def test_the_watched_folder(township: None, tmp_path: Path) -> None:
    """A named thread takes the files dropped in; each ends in done/ or rejected/."""
    from pingan_centre.console.cap.watch import Watcher
    from pingan_centre.console.config import CapConfig
    from pingan_centre.console.link import UNLINKED
    from pingan_centre.console.models import CapImport
    (tmp_path / "good.xml").write_bytes(cap("WH-FOLDER-1"))
    (tmp_path / "bad.xml").write_bytes(b"<<<")
    (tmp_path / ".partial.xml").write_bytes(b"<<<")  # still being written: left alone
    (tmp_path / "notes.txt").write_text("not a CAP file")
    watcher = Watcher(CapConfig(watch_dir=str(tmp_path), areas=AREAS, poll_s=0.05),
                      UNLINKED).start()
    try:
        assert "centre-cap-watch" in [t.name for t in threading.enumerate()]
        wait_until(lambda: not (tmp_path / "good.xml").exists()
                   and not (tmp_path / "bad.xml").exists(), 20)
    finally:
        watcher.close()
    assert "centre-cap-watch" not in [t.name for t in threading.enumerate()]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".partial.xml", "done", "notes.txt", "rejected"]
    done = [p.name for p in (tmp_path / "done").iterdir()]
    rejected = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert len(done) == 1 and done[0].endswith("-good.xml")
    assert [n.split("-", 2)[2] for n in rejected] == ["bad.xml", "bad.xml.reason.txt"]
    reason = (tmp_path / "rejected" / rejected[1]).read_text(encoding="utf-8").splitlines()
    assert reason[:2] == ["不是有效的 XML（第 1 行第 1 列）",
                          "not well-formed XML (line 1, column 1)"]
    good = CapImport.objects.get(identifier="WH-FOLDER-1")
    assert (good.outcome, good.by, good.source) == ("broadcast", "cap-folder", "good.xml")


def test_the_cap_table_of_centre_toml(tmp_path: Path) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from pingan_centre.console import config
    path = tmp_path / "centre.toml"
    path.write_text('[cap]\nwatch_dir = "/srv/cap"\nallow_drills = true\n'
                    '[cap.areas]\n"柳村" = "420102001001"\n', encoding="utf-8")
    cfg = config.load(str(path)).cap
    assert (cfg.watch_dir, cfg.allow_drills, cfg.areas, cfg.repeat) == (
        "/srv/cap", True, {"柳村": "420102001001"}, 2)
    for bad, words in (('[cap]\nallow_drill = true\n', "unknown keys ['allow_drill']"),
                       ('[cap.areas]\n"柳村" = "4201-02"\n', "2 to 12 digits")):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(ImproperlyConfigured, match=re.escape(words)):
            config.load(str(path))


def test_area_prefixes() -> None:
    from pingan_centre.console.cap.imports import area_prefix
    assert [area_prefix(c) for c in ("420000", "420100", "420102", "420102001000",
                                     "420102001001", "420000000000")] == [
        "42", "4201", "420102", "420102001", "420102001001", "42"]
