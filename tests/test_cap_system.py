"""A CAP 1.2 alert reaching the loudspeakers, all real (issue 23 item 6): Mosquitto, the
served console with a watched CAP folder, and two simulated stations as their own
processes with loudspeakers on the null sink. The officer uploads the alert on the CAP
page: the station in the alert's area speaks it, the other stays silent. A Cancel dropped
into the folder stops it mid-sentence and the file moves to done/; a bad file uploaded
is refused in both languages."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import requests
from centre_helpers import Centre, database
from conftest import wait_until
from test_broadcast_system import Sim, online
from test_cap import cap


def results(s: requests.Session, centre: Centre, bid: str) -> dict[str, Any]:
    got = s.get(f"{centre.url}/broadcast/results?id={bid}", timeout=10).json()
    return {r["station"]: r for r in got["rows"]} | {"": got}


def upload(s: requests.Session, centre: Centre, data: bytes) -> requests.Response:
    return s.post(f"{centre.url}/cap/import", files={"cap": ("alert.xml", data)},
                  data={"csrfmiddlewaretoken": s.cookies["csrftoken"]},
                  headers={"Accept": "application/json"}, timeout=30)


def test_an_alert_uploaded_plays_where_its_area_is(tmp_path: Path, broker) -> None:  # type: ignore[no-untyped-def]
    db = next(database("sqlite", tmp_path))
    township = f"tw{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "cap-in"
    centre = Centre(tmp_path, db, broker.port, township, villages={"s1": "柳村", "s2": "杏村"},
                    toml=f'[cap]\nwatch_dir = "{folder}"\npoll_s = 0.2\n'
                    '[cap.areas]\n"柳村" = "420102001001"\n"杏村" = "420103005001"\n')
    sims = [Sim(tmp_path, broker.port, "s1", township),
            Sim(tmp_path, broker.port, "s2", township)]
    try:
        centre.start()
        for sim in sims:
            sim.start()
        s = centre.session("officer")
        wait_until(lambda: online(s, centre) == {"s1", "s2"}, 60, "both stations online")
        # Long enough to be still speaking when the cancel comes.
        alert = cap("WH-SYS-1", geocode="420102")
        r = upload(s, centre, alert)
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["outcome"], got["drill"]) == ("broadcast", False)
        assert got["reason"] == "已播往 1 个站点（柳村）"
        bid = got["broadcast"]
        wait_until(lambda: results(s, centre, bid)["s1"]["result"] == "started", 60,
                   "s1 speaking the alert")
        assert list(results(s, centre, bid)) == ["s1", ""]  # s2 is outside the area
        wait_until(lambda: sims[0].loudness() > 0.01, 30, "s1's loudspeaker sounding")

        (folder / ".cancel.xml").write_bytes(cap(
            "WH-SYS-2", msg_type="Cancel", sent="2026-12-06T10:00:00+08:00",
            references="whqxt@cma.gov.cn,WH-SYS-1,2026-12-06T08:00:00+08:00"))
        (folder / ".cancel.xml").rename(folder / "cancel.xml")  # dropped in whole
        wait_until(lambda: results(s, centre, bid)["s1"]["result"] == "stopped", 30,
                   "s1 stopped by the cancel")
        assert [p.name.split("-", 2)[2] for p in (folder / "done").iterdir()] == [
            "cancel.xml"]
        assert not (folder / "cancel.xml").exists()
        assert sims[0].loudness() > 0.01 and sims[1].loudness() == 0.0

        bad = upload(s, centre, b"<alert>")
        assert bad.status_code == 400
        body = bad.json()
        assert (body["outcome"], body["reason"], body["reason_en"]) == (
            "rejected", "不是有效的 XML（第 1 行第 7 列）",
            "not well-formed XML (line 1, column 7)")
        # The form (no JSON asked): the page again, the refusal on top, in Chinese.
        page = s.post(f"{centre.url}/cap/import", files={"cap": ("x.xml", b"<alert>")},
                      data={"csrfmiddlewaretoken": s.cookies["csrftoken"]}, timeout=30)
        assert page.status_code == 400
        top = page.text[page.text.index('id="cap-result"'):]
        top = top[:top.index("</div>")]
        assert "<h2>已拒收" in top and "不是有效的 XML（第 1 行第 7 列）" in top
        assert "已取消" in page.text  # the cancel, in the list below
        audit = centre.python(
            "from pingan_centre.console.models import AuditEntry\n"
            "print(json.dumps([[a.user, a.detail['outcome']] for a in AuditEntry.objects"
            ".filter(action='cap.import').order_by('at', 'id')]))")
        assert audit == [["officer", "broadcast"], ["cap-folder", "cancelled"],
                         ["officer", "rejected"], ["officer", "rejected"]]
    finally:
        for sim in sims:
            sim.stop()
        centre.stop()
        db.drop()
