"""The monthly report (issue 23, item 9) on a real database: a seeded March 2025 whose
figures are known, read back from the printable page and from the XLSX (opened with
openpyxl), which must agree. SQLite by default; PINGAN_TEST_CONSOLE_DB=postgres runs
the same on PostgreSQL (console_inproc)."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta
from typing import Any

import console_inproc as console
import pytest

MONTH = "2025-03"


def _at(day: int, hour: int = 0, minute: int = 0, month: int = 3) -> datetime:
    from django.utils import timezone
    return timezone.make_aware(datetime(2025, month, day, hour, minute),
                               timezone.get_current_timezone())


@pytest.fixture(scope="module", autouse=True)
def march() -> None:
    """Three stations' March: alarms of every outcome, two broadcasts, health every five
    minutes with a day missing, self-tests; and April, which must not count."""
    console.reset()
    from pingan_centre.console.models import (
        Alarm,
        Command,
        Event,
        HealthReport,
        Station,
    )
    r1 = Station.objects.create(name="r1", township=console.TOWNSHIP, village="北村")
    r2 = Station.objects.create(name="r2", township=console.TOWNSHIP, village="南村")
    r3 = Station.objects.create(name="r3", township=console.TOWNSHIP, village="南村")

    def alarm(st: Any, raised: datetime, outcome: str, ack: float,
              resolve: float | None = None, dispatch: float | None = None) -> None:
        Alarm.objects.create(
            station=st, first_event=f"a-{st.name}-{raised:%d%H%M}-{ack}", raised_at=raised,
            state="resolved" if outcome else "acknowledged", outcome=outcome,
            acked_at=raised + timedelta(seconds=ack),
            dispatched_at=None if dispatch is None else raised + timedelta(seconds=dispatch),
            resolved_at=None if resolve is None else raised + timedelta(seconds=resolve))

    alarm(r1, _at(10, 10), "genuine", 10, 1200, dispatch=60)
    alarm(r1, _at(11, 22), "genuine", 30, 1800)
    alarm(r2, _at(12, 3), "false", 2, 5)
    for i in range(3):
        alarm(r2, _at(13, 9, i), "test", 0.2, 0.4)
    alarm(r2, _at(20, 1), "", 20)
    alarm(r1, _at(2, 1, month=4), "genuine", 1, 2)  # April

    n = [0]

    def event(st: Any, kind: str, at: datetime, payload: dict[str, Any]) -> None:
        n[0] += 1
        Event.objects.create(id=f"ev-{n[0]}", station=st, type=kind, seq=n[0],
                             ts=at.isoformat(), received_at=at, payload=payload)

    def play(st: Any, at: datetime, ok: bool, by: str = "leader") -> Any:
        return Command.objects.create(
            id=f"bc-{st.name}-{at:%d%H%M}", station=st, cmd="broadcast.play", by=by,
            created_at=at, sent=True, result_ok=ok, result_at=at,
            payload={"cmd": "broadcast.play", "id": f"bc-{st.name}-{at:%d%H%M}"})

    first = _at(8, 9)
    c1, c2 = play(r1, first, True), play(r2, first, True)
    play(r3, first, False)  # quiet hours
    event(r1, "audio.playback", first + timedelta(seconds=40), {
        "phase": "finished", "play_id": c1.pk, "cmd_id": c1.pk, "origin": "township"})
    event(r2, "audio.playback", first + timedelta(seconds=20), {
        "phase": "preempted", "play_id": c2.pk, "cmd_id": c2.pk, "origin": "township"})
    c4 = play(r1, _at(9, 9), True)
    event(r1, "audio.playback", _at(9, 9, 1), {"phase": "finished", "play_id": c4.pk,
                                               "origin": "township"})
    play(r1, _at(1, 9, month=4), True)  # April

    # r1: every 5 minutes all March but the 15th; r2: hourly from the 16th.
    reports = []
    t = _at(1)
    while t < _at(1, month=4):
        if not _at(15) <= t < _at(16):
            reports.append(HealthReport(station=r1, ts=t.isoformat(), received_at=t))
        if t >= _at(16) and t.minute == 30:
            reports.append(HealthReport(station=r2, ts=t.isoformat(), received_at=t))
        t += timedelta(minutes=5)
    HealthReport.objects.bulk_create(reports)

    event(r1, "selftest", _at(5, 10), {"passed": True, "by": "tech", "results": []})
    event(r1, "selftest", _at(20, 10), {"passed": False, "by": "tech", "results": [
        {"check": "camera", "status": "fail"}, {"check": "disk", "status": "pass"}]})
    event(r3, "selftest", _at(5, 12, 10), {"passed": True, "by": "tech", "results": []})
    event(r1, "alarm.panic", _at(6, 10), {"source": "selftest", "held_s": 0.3})
    event(r3, "selftest", _at(3, 10, month=4), {"passed": False, "by": "t", "results": []})


def _tables(html: str) -> dict[str, list[list[str]]]:
    out = {}
    for key, body in re.findall(r'<table class="grid" id="t-(\w+)">(.*?)</table>', html, re.S):
        out[key] = [[re.sub(r"<[^>]+>", "", c).strip() for c in
                     re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
                    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    return out


def _row(table: list[list[str]], first: str) -> list[str]:
    return next(r for r in table if r and r[0] == first)


def _xlsx(body: bytes) -> dict[str, list[list[Any]]]:
    from openpyxl import load_workbook
    book = load_workbook(io.BytesIO(body), read_only=True)
    return {ws.title: [list(r) for r in ws.iter_rows(values_only=True)]
            for ws in book.worksheets}


def _same(cell: Any, shown: str) -> bool:
    """A spreadsheet cell and the page's text for it: the same figure (Excel keeps 10.0
    as 10), the same words, or empty shown as a dash."""
    if cell is None:
        return shown in ("—", "")
    if isinstance(cell, int | float):
        return float(shown) == float(cell)
    return str(cell) == shown


def test_the_month_in_figures_on_the_page_and_in_the_xlsx() -> None:
    leader = console.client("leader", "en")
    page = leader.get(f"/report?month={MONTH}")
    assert page.status_code == 200
    html = page.content.decode()
    t = _tables(html)
    outcomes = {r[0]: r[1] for r in t["outcomes"][1:]}
    assert outcomes == {"genuine": "2", "false alarm": "1", "drill": "0", "test": "3",
                        "not yet resolved": "1", "total": "7"}, outcomes
    # Genuine and not yet resolved (stats.py's default): ack 10, 30, 20 s.
    whole = _row(t["times"], "whole township")
    assert whole[1:5] == ["3", "20.0", "30.0", "3"], whole
    assert whole[-3:] == ["1200.0", "1800.0", "2"], whole  # resolve p50, p90, n
    assert _row(t["times"], "北村")[1:4] == ["2", "10.0", "30.0"]

    bc = t["broadcasts"]
    assert _row(bc, "r1")[1:] == ["2", "2", "0", "2", "100.0"]
    assert _row(bc, "r2")[1:] == ["1", "1", "0", "0", "0.0"]
    assert _row(bc, "r3")[1:] == ["1", "0", "1", "0", "0.0"]
    assert _row(bc, "all stations")[1:] == ["4", "3", "1", "2", "50.0"]
    assert "2 broadcasts sent by the console" in html

    av = t["availability"]
    assert _row(av, "r1")[2:] == ["96.8", "720", "744"]  # the 15th missing
    # r2 first spoke on the 8th at 09:00 (a playback event), then hourly from the 16th.
    assert _row(av, "r2")[2:] == ["67.9", "385", "567"]
    assert _row(av, "r3")[2:] == ["0.2", "1", "636"]

    st = t["selftests"]
    assert _row(st, "r1")[1:] == ["2", "1", "1", "1", "failed", "camera"]
    assert _row(st, "r3")[1:] == ["1", "1", "0", "0", "passed", ""]
    assert "1 stations ran no self-test" in html

    # Printable, nothing fetched from elsewhere.
    assert "@media print" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)

    sheets = _xlsx(leader.get(f"/report.xlsx?month={MONTH}").content)
    names = list(sheets)
    assert names[0] == "Report" and sheets["Report"][0] == ["Monthly report", "t19", MONTH]
    for key, name in (("outcomes", "Alarms by outcome"), ("times", "Response times"),
                      ("broadcasts", "Broadcasts and their reach"),
                      ("availability", "Station availability"), ("selftests", "Self-tests")):
        rows = [r for r in sheets[name] if any(c is not None for c in r)]
        on_page = t[key]
        assert [str(h) for h in rows[0]] == on_page[0], (name, rows[0])
        for line in on_page[1:]:
            xl = next(r for r in rows if str(r[0]) == line[0])
            assert [_same(c, shown) for c, shown in zip(xl, line, strict=True)], (xl, line)


def test_drills_tests_and_false_alarms_on_request() -> None:
    html = console.client("leader", "en").get(
        f"/report?month={MONTH}&include=all").content.decode()
    whole = _row(_tables(html)["times"], "whole township")
    assert whole[1:3] == ["7", "2.0"], whole  # 0.2 x3, 2, 10, 20, 30: p50 2 s


def test_chinese_first_and_the_month_chooser() -> None:
    zh = console.client("leader", "zh-hans")
    html = zh.get(f"/report?month={MONTH}").content.decode()
    assert "月度报告" in html and "按结果统计报警" in html
    assert '<option value="2025-03" selected>' in html
    # Another month: nothing from March.
    april = _tables(zh.get("/report?month=2025-04").content.decode())
    assert _row(april["outcomes"], "合计")[1] == "1"
    sheets = _xlsx(zh.get(f"/report.xlsx?month={MONTH}").content)
    assert next(iter(sheets)) == "报告" and "按结果统计报警" in sheets
    # A bad month is this month, not an error.
    assert zh.get("/report?month=garbage").status_code == 200


def test_the_xlsx_needs_the_export_permission_and_is_audited() -> None:
    from pingan_centre.console.models import AuditEntry
    assert console.client("viewer", "en").get(f"/report.xlsx?month={MONTH}").status_code == 403
    assert console.client("viewer", "en").get(f"/report?month={MONTH}").status_code == 200
    console.client("leader", "en").get(f"/report.xlsx?month={MONTH}")
    assert AuditEntry.objects.filter(action="report.export", target=MONTH).exists()
