"""No station can break the console (issue 19): whatever a station sends, valid by the
published schemas or not, ingest stores it or keeps it aside, and then every page renders
in both languages without a server error. Before, one camera.person event whose id held
a `/` made `/`, `/cards` and `/alarm/N` answer 500 while its alarm was open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import console_inproc as console
import pytest
from conftest import SCHEMA_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schema_strategies import RAW_HOSTILE, broken, encode, valid

from pingan_sim.localbroker import reachable

EVENT = json.loads((SCHEMA_DIR / "event.schema.json").read_text(encoding="utf-8"))
STATE = json.loads((SCHEMA_DIR / "state.schema.json").read_text(encoding="utf-8"))
T = console.TOWNSHIP


@pytest.fixture(scope="module", autouse=True)
def django_console() -> None:
    console.setup()


def _topic(kind: str, data: Any) -> str:
    station = data.get("station") if isinstance(data, dict) else None
    name = station if isinstance(station, str) and station else "v042"
    return f"pingan/v1/{T}/{name}/{kind}"


def _ours(data: Any) -> Any:
    """Most payloads name this township (else they only test the topic check)."""
    if isinstance(data, dict) and "township" in data:
        return {**data, "township": T}
    return data


def _press(station: str = "v042") -> dict[str, Any]:
    import uuid
    return {"type": "alarm.panic", "id": str(uuid.uuid4()), "station": station,
            "township": T, "seq": 1, "priority": 0, "ts": "2026-12-06T03:00:00.000Z",
            "clock_synced": True, "payload": {"source": "button", "held_s": 0.2}}


message = st.one_of(
    valid(EVENT).map(_ours).map(lambda d: (_topic("events", d), encode(d))),
    valid(STATE).map(_ours).map(lambda d: (_topic("state", d), encode(d))),
    valid(EVENT).map(_ours).flatmap(broken).map(lambda d: (_topic("events", d), encode(d))),
    valid(STATE).map(_ours).flatmap(broken).map(lambda d: (_topic("state", d), encode(d))),
    st.tuples(st.sampled_from([f"pingan/v1/{T}/v042/events", f"pingan/v1/{T}/v042/state",
                               f"pingan/v1/{T}/v042/cmd/result", f"pingan/v1/{T}/a b/x",
                               "pingan/v1/other/v042/events"]),
              st.sampled_from(RAW_HOSTILE)),
)


def render_everything(alarm_ids: Iterable[int] | None = None) -> list[str]:
    """Every page, for every stored alarm (or those given), as each role, in both
    languages."""
    seen = []
    walk = console.pages(alarm_ids)
    for user in ("admin", "viewer"):
        for language in console.LANGUAGES:
            c = console.client(user, language)
            for page in walk:
                response = c.get(page)
                assert response.status_code < 500, (page, language, response.status_code)
                assert response.status_code in (200, 403, 404), (page, response.status_code)
                seen.append(page)
    return seen


# Fewer on PostgreSQL (the same test again, in a process of its own, see the last test).
@settings(max_examples=6 if os.environ.get(console.DB_ENV) == "postgres" else 15,
          deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(batch=st.lists(message, min_size=1, max_size=6))
def test_any_payload_then_every_page_renders(batch: list[tuple[str, bytes]]) -> None:
    from django.utils import timezone

    from pingan_centre.console.models import Alarm, Event, Quarantined
    before = Event.objects.count() + Quarantined.objects.count()
    started = timezone.now()
    # An open alarm at the station the payloads name, so its cards are on every screen.
    console.feed([(f"pingan/v1/{T}/v042/events", encode(_press()))])
    console.feed(batch)
    # Each message was either stored or kept aside (an ignored one: none are here).
    assert Event.objects.count() + Quarantined.objects.count() >= before + 1
    assert Alarm.objects.filter(state__in=Alarm.OPEN).exists()
    # The pages of the alarms this batch touched (earlier examples walked the others: the
    # whole walk each time made the test quadratic in its examples).
    touched = set(Event.objects.filter(received_at__gte=started, alarm__isnull=False)
                  .values_list("alarm_id", flat=True))
    render_everything(touched | set(Alarm.objects.filter(raised_at__gte=started)
                                    .values_list("pk", flat=True)))


def test_ids_stored_before_the_patterns_still_have_working_urls() -> None:
    """Rows from before issue 19 hold ids the schema now refuses: every page still works."""
    from django.utils import timezone

    from pingan_centre.console.models import Alarm, Event, Station
    now = timezone.now()
    st_ = Station.objects.create(name="old/one\n<b>", township=T, village="<i>旧村</i>",
                                 label="{{ x }}", state_ts="tomorrow, probably",
                                 problems=[{"code": "a/b", "message": {"zh": "<", "en": ">"},
                                            "since": "?"}])
    person = Event.objects.create(id="cam/../x\n?#", station=st_, type="camera.person",
                                  ts="", received_at=now, payload={"snapshot_jpeg": "%%%"})
    alarm = Alarm.objects.create(station=st_, first_event="p/1\n", raised_at=now,
                                 snapshot=person)
    Event.objects.create(id="p/1\n", station=st_, type="alarm.panic", ts="x" * 40,
                         received_at=now, payload={}, alarm=alarm)
    pages = render_everything()
    assert f"/alarm/{alarm.pk}" in pages and "/" in pages and "/cards" in pages
    picture = console.client("officer", "en").get(f"/alarm/{alarm.pk}/snapshot.jpg")
    assert picture.status_code == 404, "a snapshot that is not base64 is not found, no 500"


def test_a_clock_a_day_ahead_does_not_freeze_the_station() -> None:
    """States are taken in arrival order; the station's own time is shown as unreliable."""
    from django.utils import timezone

    from pingan_centre.console.models import Station

    def state(ts: str, synced: bool, problems: list[dict[str, Any]]) -> tuple[str, bytes]:
        return (f"pingan/v1/{T}/v043/state", encode({
            "station": "v043", "township": T, "online": True, "version": "0.1.0",
            "ts": ts, "clock_synced": synced, "problems": problems, "name": "西村 2 号"}))

    tomorrow = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    today = timezone.now().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    problem = {"code": "uplink_down", "message": {"zh": "上行中断", "en": "uplink down"},
               "since": tomorrow}
    console.feed([state(tomorrow, False, [problem])])
    console.feed([state(today, True, [])])
    st_ = Station.objects.get(pk="v043")
    assert st_.problems == [] and st_.state_ts == today and st_.label == "西村 2 号"
    console.feed([state(tomorrow, False, [problem])])
    zh = console.client("officer", "zh-hans").get("/stations").content.decode()
    assert "上行中断" in zh and "时钟未同步" in zh
    en = console.client("officer", "en").get("/stations").content.decode()
    assert "clock not synced" in en


def test_what_the_databases_refuse_is_kept_aside_and_ingest_goes_on() -> None:
    from pingan_centre.console.models import Event, Quarantined
    bad = [_press() for _ in range(3)]
    bad[0]["payload"]["source"] = "button\x00"
    raw_surrogate = encode(bad[1]).replace(b'"button"', b'"\\ud800"')
    good = _press()
    before = Quarantined.objects.count()
    console.feed([(f"pingan/v1/{T}/v042/events", encode(bad[0])),
                  (f"pingan/v1/{T}/v042/events", raw_surrogate),
                  (f"pingan/v1/{T}/v042/events", b'{"id": NaN}'),
                  (f"pingan/v1/{T}/v042/events", encode(good))])
    assert Event.objects.filter(pk=good["id"]).exists()
    assert Quarantined.objects.count() == before + 3
    reasons = [json.loads(q.reason) for q in Quarantined.objects.order_by("-id")[:3]]
    assert all(r["zh"] and r["en"] for r in reasons), reasons


@pytest.mark.skipif(os.environ.get(console.DB_ENV) == "postgres",
                    reason="this is the PostgreSQL run itself")
def test_the_same_on_postgresql(tmp_path: Path) -> None:
    """PostgreSQL refuses more than SQLite (NUL in text and jsonb, lone surrogates,
    values longer than a column): everything above again, on a PostgreSQL console, in a
    process of its own (Django's settings are per process)."""
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (start it: "
                    "pg_ctlcluster --skip-systemctl-redirect 15 main start)")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
         __file__], cwd=Path(__file__).parent.parent, capture_output=True, text=True,
        env={**os.environ, console.DB_ENV: "postgres"}, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
