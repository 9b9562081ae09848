"""Staged rollout from the console (issue 22), on a real centre process, a real broker and
real stations: the release offered to the canaries first; the stations' own update part
answers (here they trust another key, so each refuses the release: wrong_key); a canary
that refuses or rolls back halts the rollout, and the rest is never offered; once every
canary committed, the rest is offered. Every step is audited."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from centre_helpers import Centre, Database, database, press, station
from conftest import wait_until

from edge.station import Station
from pingan_sim.update_rig import build_release, make_signer


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from database(request.param, tmp_path)


@pytest.fixture
def township() -> str:
    return f"tw{uuid.uuid4().hex[:8]}"


@pytest.fixture
def centre(tmp_path: Path, db: Database, broker: Any, township: str) -> Iterator[Centre]:
    c = Centre(tmp_path, db, broker.port, township, villages={"s1": "东村"})
    c.start()
    yield c
    c.stop()


@pytest.fixture
def units(tmp_path: Path, broker: Any, township: str) -> Iterator[list[Station]]:
    trusted = make_signer(tmp_path / "unit-keys", "another-key")
    made = []
    for name in ("s1", "s2", "s3"):
        st = station(tmp_path, broker.port, name, township,
                     update={"keyring": str(trusted.cert)})
        wait_until(lambda st=st: st.uplink.connected, what=f"{name} connected")
        made.append(st)
    yield made
    for st in made:
        st.stop()


def descriptor(tmp_path: Path) -> str:
    built = build_release(tmp_path, "0.2.0", make_signer(tmp_path / "keys", "release"))
    return built.descriptor.read_text()


def offers(db: Database) -> dict[str, str]:
    return {cmd_id: st for cmd_id, st in db.rows(
        "SELECT id, station_id FROM console_command WHERE cmd = 'update.offer'")}


def audited(db: Database) -> list[tuple[str, str]]:
    return [(a, t) for a, t in db.rows(
        "SELECT action, target FROM console_auditentry WHERE action IN "
        "('rollout.start', 'rollout.refused', 'rollout.rest') ORDER BY id")]


def all_online(db: Database) -> None:
    """The centre saw each station's retained state, which a station publishes after it
    subscribed to its commands: an offer now is not lost to a SUBACK race."""
    wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_station WHERE online")[0][0]
               == 3, 30, "every station online at the centre")


def test_a_canary_that_refuses_halts_the_rollout(tmp_path: Path, centre: Centre,
                                                 db: Database, units: list[Station]) -> None:
    all_online(db)
    admin, viewer = centre.session("admin"), centre.session("viewer")
    page = admin.get(f"{centre.url}/releases", timeout=10)
    assert page.ok and all(f'id="ver-{n}"' in page.text for n in ("s1", "s2", "s3"))
    text = descriptor(tmp_path)
    form = {"descriptor": text, "url": "http://127.0.0.1:9/pingan-edge-0.2.0.raucb",
            "canary": "s1"}
    assert centre.post(viewer, "/releases/start", **form).status_code == 403
    assert centre.post(admin, "/releases/start", descriptor="{}", url=form["url"],
                       canary="s1").status_code == 400
    assert centre.post(admin, "/releases/start", **form).status_code in (200, 302)
    sent = offers(db)
    assert list(sent.values()) == ["s1"]
    cmd_id = next(iter(sent))
    rollout_id = cmd_id.split(":")[1]

    def halted() -> str | None:
        html = admin.get(f"{centre.url}/releases", timeout=10).text
        row = re.search(rf'<tr class="res-(\w+)" id="res-{re.escape(rollout_id)}-s1">', html)
        # Both tables: the rollout's row and the station's last result, in the officer's
        # language (zh-hans by default).
        last = re.search(r'id="ver-s1">.*?class="last r-refused">已拒绝 <span translate="no">'
                         r'0.2.0<', html, re.S)
        return html if row and row.group(1) == "refused" and "s-halted" in html and last \
            else None

    wait_until(halted, 30, "the canary's refusal on the releases page")
    # Halted: the rest is refused, and nothing reaches s2 or s3.
    assert centre.post(admin, f"/releases/{rollout_id}/rest").status_code == 403
    assert list(offers(db).values()) == ["s1"]
    assert audited(db) == [("rollout.start", rollout_id), ("rollout.refused", rollout_id)]
    reason = db.rows("SELECT detail FROM console_auditentry WHERE action = 'rollout.refused'")
    assert "halted" in str(reason[0][0])


def test_the_rest_is_offered_once_every_canary_committed(
        tmp_path: Path, centre: Centre, db: Database, units: list[Station]) -> None:
    all_online(db)
    admin = centre.session("tech")
    text = descriptor(tmp_path)
    assert centre.post(admin, "/releases/start", descriptor=text, canary="s1",
                       url="http://127.0.0.1:9/b.raucb").status_code in (200, 302)
    cmd_id = next(iter(offers(db)))
    rollout_id = cmd_id.split(":")[1]
    # Not yet: the canary has not committed.
    assert centre.post(admin, f"/releases/{rollout_id}/rest").status_code == 403
    wait_until(lambda: db.rows("SELECT 1 FROM console_event WHERE type = 'update.refused'"),
               30, "the canary's answer")
    # The canary's commit, as the centre stores it from the station (stations here trust
    # another key, so the event is written into the centre's database directly).
    centre.python(f"""
from django.utils import timezone
from pingan_centre.console.models import Event
Event.objects.filter(type="update.refused").delete()
Event.objects.create(id="committed-1", station_id="s1", type="update.committed", seq=99,
                     ts="2026-12-06T08:00:00Z", received_at=timezone.now(),
                     payload={{"version": "0.2.0", "running": "0.2.0",
                              "cmd_id": {json.dumps(cmd_id)}, "source": "township"}})
print("{{}}")
""")
    assert centre.post(admin, f"/releases/{rollout_id}/rest").status_code in (200, 302)
    assert sorted(offers(db).values()) == ["s1", "s2", "s3"]
    # The real stations get the offer and answer it.
    for name in ("s2", "s3"):
        wait_until(lambda name=name: db.rows(
            "SELECT 1 FROM console_event WHERE station_id = ? AND type = 'update.offered'",
            name), 30, f"{name} answering the offer")
    assert centre.post(admin, f"/releases/{rollout_id}/rest").status_code == 403
    assert [a for a, _ in audited(db)] == ["rollout.start", "rollout.refused", "rollout.rest",
                                          "rollout.refused"]


def test_a_canary_waiting_to_reboot_shows_why_and_neither_halts_nor_counts_as_done(
        tmp_path: Path, centre: Centre, db: Database, units: list[Station]) -> None:
    all_online(db)
    admin = centre.session("tech")
    assert centre.post(admin, "/releases/start", descriptor=descriptor(tmp_path), canary="s1",
                       url="http://127.0.0.1:9/b.raucb").status_code in (200, 302)
    cmd_id = next(iter(offers(db)))
    rollout_id = cmd_id.split(":")[1]
    # The canary trusts another key and refuses; played here as if it had installed: its
    # refusal goes from the centre's database (as in the test above).
    wait_until(lambda: db.rows("SELECT 1 FROM console_event WHERE type = 'update.refused'"),
               30, "the canary's answer")
    centre.python("""
from pingan_centre.console.models import Event
Event.objects.filter(type="update.refused").delete()
print("{}")
""")
    # An alarm is open at s1: its updater says why the reboot waits, through the station's
    # outbox and the broker, checked by the centre against the published schema.
    s1 = units[0]
    press(s1)
    why = s1.update_blocked()
    assert why is not None and why.code == "alarm_open"
    assert s1.updater is not None
    s1.updater._event("update.waiting", "0.2.0", code=why.code, reason=why.reason,
                      cmd_id=cmd_id, source="township")
    wait_until(lambda: db.rows("SELECT 1 FROM console_event WHERE type = 'update.waiting'"),
               30, "update.waiting at the centre")

    def page(language: str) -> str:
        html: str = admin.get(f"{centre.url}/releases", timeout=10,
                              cookies={"django_language": language}).text
        return html

    row = re.compile(rf'<tr class="res-waiting" id="res-{re.escape(rollout_id)}-s1">'
                     r'<td translate="no">s1</td><td>(.*?)</td><td class="result" '
                     r'data-result="waiting">(.*?)</td><td>(.*?)</td></tr>')
    zh = row.search(page("zh-hans"))
    assert zh is not None and zh.groups() == ("试点", "等待重启", why.reason.zh)
    en = row.search(page("en"))
    assert en is not None and en.groups() == ("canary", "waiting to reboot", why.reason.en)
    html = page("zh-hans")
    # The station's own row too: its last update result and why.
    assert re.search(r'id="ver-s1">.*?class="last r-waiting">等待重启 <span translate="no">'
                     r'0.2.0</span></td>\s*<td>[^<]*</td><td>' + re.escape(why.reason.zh)
                     + "</td>", html, re.S)
    # Waiting halts nothing, and is not done: the rest is not offered yet.
    assert 's-canary"' in html and "s-halted" not in html
    assert centre.post(admin, f"/releases/{rollout_id}/rest").status_code == 403
    assert list(offers(db).values()) == ["s1"]
    reason = db.rows("SELECT detail FROM console_auditentry WHERE action = 'rollout.refused'")
    assert "not every canary has committed yet" in str(reason[-1][0])
