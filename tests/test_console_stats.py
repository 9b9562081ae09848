"""Statistics count what 考核 counts (issue 19): twenty self-test alarms closed in 0.2 s
set the acknowledge p50 to 0.2 s while the one genuine alarm took 5 s. Genuine alarms
(and those not yet resolved) by default; drills, tests and false alarms on request."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import console_inproc as console
import pytest


@pytest.fixture(scope="module", autouse=True)
def django_console() -> None:
    console.setup()


def test_genuine_alarms_by_default_and_the_rest_on_request() -> None:
    from django.utils import timezone

    from pingan_centre.console.models import Alarm, Station
    # Its own station: other tests in this process leave alarms elsewhere.
    st = Station.objects.create(name="stats1", township="t19", village="南村")
    start = timezone.now() - timedelta(days=1)

    def alarm(i: int, outcome: str, ack_s: float) -> None:
        raised = start + timedelta(minutes=i)
        Alarm.objects.create(station=st, first_event=f"s-{i}", raised_at=raised,
                             state="resolved", outcome=outcome,
                             acked_at=raised + timedelta(seconds=ack_s),
                             resolved_at=raised + timedelta(seconds=ack_s))

    for i in range(20):
        alarm(i, "test", 0.2)
    alarm(20, "genuine", 5.0)
    alarm(21, "drill", 0.3)
    alarm(22, "false", 0.4)

    officer = console.client("leader", "en")
    default = officer.get("/stats?by=station").content.decode()
    row = next(line for line in _rows(default) if line and line[0] == "stats1")
    assert row[1] == "1" and row[2] == "5.0 s", row  # one alarm, p50 5 s
    assert "alarms not counted" in default

    everything = officer.get("/stats?by=station&include=all").content.decode()
    row = next(line for line in _rows(everything) if line and line[0] == "stats1")
    assert row[1] == "23" and row[2] == "0.2 s", row
    tests_only = officer.get("/stats?by=station&include=test").content.decode()
    assert next(r for r in _rows(tests_only) if r and r[0] == "stats1")[1] == "21"
    assert 'name="include" value="test" checked' in tests_only

    exported = officer.get("/stats.csv?by=station").content.decode("utf-8-sig")
    lines = list(csv.reader(io.StringIO(exported)))
    assert next(x for x in lines if x[0] == "stats1")[:3] == ["stats1", "1", "5.0"], lines
    exported = officer.get("/stats.csv?by=station&include=all").content.decode("utf-8-sig")
    assert next(x for x in csv.reader(io.StringIO(exported)) if x[0] == "stats1")[:3] == [
        "stats1", "23", "0.2"]

    chinese = console.client("leader", "zh-hans").get("/stats").content.decode()
    assert "真实报警" in chinese and "未计入" in chinese


def _rows(html: str) -> list[list[str]]:
    import re
    table = html.split('id="stats"', 1)[1].split("</table>", 1)[0]
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
