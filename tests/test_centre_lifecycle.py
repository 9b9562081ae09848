"""The console end to end on SQLite and on PostgreSQL: a real centre process, real
stations, a real broker. Alarm lifecycle, joined presses, alarm.ack to the station,
permissions, quarantine, escalation on an injected clock, restart without loss."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from centre_helpers import Centre, Database, database, press, station
from conftest import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import Config
from edge.contract.events import Selftest, SelftestPayload, SelftestResult, stamp
from edge.unit.indicator import Mode


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from database(request.param, tmp_path)


@pytest.fixture
def township() -> str:
    return f"tw{uuid.uuid4().hex[:8]}"


@pytest.fixture
def centre(tmp_path: Path, db: Database, broker, township: str) -> Iterator[Centre]:  # type: ignore[no-untyped-def]
    c = Centre(tmp_path, db, broker.port, township, villages={"s1": "东村", "s2": "西村"})
    c.start()
    yield c
    c.stop()


@pytest.fixture
def stations(tmp_path: Path, broker, township: str):  # type: ignore[no-untyped-def]
    made = []

    def make(name: str, **sections):  # type: ignore[no-untyped-def]
        st = station(tmp_path, broker.port, name, township, **sections)
        made.append(st)
        wait_until(lambda: st.uplink.connected, what=f"{name} connected")
        return st

    yield make
    for st in made:
        st.stop()


def _timeline(db: Database, alarm_id: int) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in db.rows(  # type: ignore[misc]
        "SELECT action, to_state, by FROM console_transition WHERE alarm_id = ? ORDER BY id",
        alarm_id)]


def test_whole_alarm_lifecycle_with_ack_to_the_station(centre, db, stations):  # type: ignore[no-untyped-def]
    s1 = stations("s1", indicator={"ack_display_s": 60})
    officer = centre.session("officer")
    viewer = centre.session("viewer")
    first = press(s1)
    alarm = wait_until(lambda: centre.alarms(officer), 15, "alarm card")[0]
    assert alarm["station"] == "s1" and alarm["village"] == "东村"
    assert alarm["state"] == "new" and alarm["first_event"] == first
    press(s1)  # a second press while it is open joins the same alarm
    wait_until(lambda: centre.alarms(officer)[0]["presses"] == 2, 15, "second press joined")
    assert len(centre.alarms(officer)) == 1

    # A viewer cannot acknowledge, even with a hand-made POST carrying a valid CSRF token.
    refused = centre.post(viewer, f"/alarm/{alarm['id']}/ack")
    assert refused.status_code == 403
    assert centre.alarms(officer)[0]["state"] == "new"
    # Without a CSRF token, not even the officer can.
    no_csrf = officer.post(f"{centre.url}/alarm/{alarm['id']}/ack", timeout=10)
    assert no_csrf.status_code == 403 and centre.alarms(officer)[0]["state"] == "new"

    assert centre.post(officer, f"/alarm/{alarm['id']}/ack", note="收到").ok
    wait_until(lambda: s1.alarm.indicator.mode is Mode.ACKNOWLEDGED, 15, "station LED acknowledged")
    # The station's cmd.result for each press comes back and is recorded.
    wait_until(lambda: len(db.rows("SELECT id FROM console_command WHERE alarm_id = ? AND "
                                   "result_ok = ?", alarm["id"], True)) == 2, 15,
               "both alarm.ack answered ok")
    # Dispatch needs a target; resolve needs an outcome.
    assert centre.post(officer, f"/alarm/{alarm['id']}/dispatch").status_code == 403
    assert centre.post(officer, f"/alarm/{alarm['id']}/dispatch", to="派出所 李警官",
                       note="吹哨").ok
    assert centre.post(officer, f"/alarm/{alarm['id']}/on_scene", note="报到").ok
    assert centre.post(officer, f"/alarm/{alarm['id']}/resolve").status_code == 403
    assert centre.post(officer, f"/alarm/{alarm['id']}/resolve", outcome="genuine").ok
    assert centre.alarms(officer) == []
    # Reopening is the leader's.
    assert centre.post(officer, f"/alarm/{alarm['id']}/reopen").status_code == 403

    steps = _timeline(db, alarm["id"])
    assert [s[0] for s in steps if s[0] not in ("station_received",)] == [
        "raise", "press", "ack", "dispatch", "on_scene", "resolve"]
    assert [s for s in steps if s[0] == "station_received"][:1] == [
        ("station_received", "acknowledged", "station")]
    assert ("ack", "acknowledged", "officer") in steps
    assert ("resolve", "resolved", "officer") in steps
    audit = [r[0] for r in db.rows("SELECT action FROM console_auditentry ORDER BY id")]
    for action in ("login", "alarm.ack", "alarm.dispatch", "alarm.on_scene", "alarm.resolve"):
        assert action in audit
    # The statistics show the times, and export them.
    page = officer.get(f"{centre.url}/stats?by=station", timeout=10).text
    assert "s1" in page and " s<" in page
    leader = centre.session("leader")
    csv = leader.get(f"{centre.url}/stats.csv?by=station", timeout=10)
    assert csv.ok and "s1,1," in csv.text.replace("\ufeff", "")
    row = next(line for line in csv.text.splitlines() if line.startswith("s1,"))
    ack_p50 = float(row.split(",")[2])
    assert 0 <= ack_p50 < 60
    assert officer.get(f"{centre.url}/stats.csv", timeout=10).status_code == 403
    xlsx = leader.get(f"{centre.url}/stats.xlsx", timeout=10)
    assert xlsx.content[:2] == b"PK"
    assert centre.post(leader, f"/alarm/{alarm['id']}/reopen", note="再查").ok
    assert centre.alarms(officer)[0]["state"] == "acknowledged"


def test_an_acknowledged_alarm_sent_again_after_a_power_cut_is_acknowledged_again(  # type: ignore[no-untyped-def]
        centre, db, stations, tmp_path):
    """A power cut can lose the station's (unsynced) delivery mark: it sends the alarm
    again on the next boot. The township drops the copy, but the officer's ack must reach
    the station again, or its LED says "not acknowledged" and its update never reboots."""
    s1 = stations("s1")
    officer = centre.session("officer")
    first = press(s1)
    alarm = wait_until(lambda: centre.alarms(officer), 15, "alarm card")[0]
    assert centre.post(officer, f"/alarm/{alarm['id']}/ack").ok
    wait_until(lambda: s1.update_blocked() is None, 15, "acknowledged at the station")
    outbox = s1.outbox.path
    s1.stop()
    with sqlite3.connect(outbox) as con:  # the delivery mark the power cut lost
        assert con.execute("UPDATE events SET delivered_at = NULL WHERE id = ?",
                           (first,)).rowcount == 1
    again = stations("s1")
    wait_until(lambda: again.outbox.pending_count() == 0, 15, "the copy delivered")
    wait_until(lambda: again.update_blocked() is None, 15,
               "the station told again that its alarm was acknowledged")
    assert again.alarm.indicator.mode is Mode.ACKNOWLEDGED
    acks = db.rows("SELECT payload FROM console_command WHERE alarm_id = ? AND cmd = ?",
                   alarm["id"], "alarm.ack")
    assert len(acks) == 2
    assert len(centre.alarms(officer)) == 1  # the copy is not a new alarm, nor a press
    assert centre.alarms(officer)[0]["presses"] == 1


def test_bad_payloads_kept_aside_and_ingest_goes_on(centre, db, broker, stations):  # type: ignore[no-untyped-def]
    t = centre.township
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    good = {"type": "status", "id": str(uuid.uuid4()), "station": "s9", "township": t,
            "seq": 1, "priority": 3, "ts": "2026-11-23T10:00:00Z", "clock_synced": True,
            "payload": {"code": "x", "level": "info", "message": {"zh": "好", "en": "ok"},
                        "detail": {}}}
    bad = [
        (f"pingan/v1/{t}/s9/events", b"{not json"),
        (f"pingan/v1/{t}/s9/events", json.dumps({**good, "type": "alarm.panic"}).encode()),
        (f"pingan/v1/{t}/s9/events", json.dumps({**good, "station": "s8"}).encode()),
        (f"pingan/v1/{t}/s9/events", b'{"x": "' + b"a" * 600_000 + b'"}'),
        (f"pingan/v1/{t}/s9/state", b"[]"),
    ]
    for topic, payload in bad:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
    pub.publish(f"pingan/v1/{t}/s9/events", json.dumps(good).encode(), qos=1
                ).wait_for_publish(5)
    # A camera snapshot, then a press at the same station: the card carries the picture.
    _, jpeg = cv2.imencode(".jpg", np.full((60, 80, 3), (0, 0, 255), np.uint8))
    person = {**good, "type": "camera.person", "id": str(uuid.uuid4()), "priority": 2,
              "payload": {"score": 0.9, "box": [0.1, 0.1, 0.5, 0.9], "zone": "gate",
                          "snapshot_jpeg": base64.b64encode(jpeg.tobytes()).decode()}}
    panic = {**good, "type": "alarm.panic", "id": str(uuid.uuid4()), "priority": 0,
             "payload": {"source": "button", "held_s": 0.1}}
    for body in (person, panic):
        pub.publish(f"pingan/v1/{t}/s9/events", json.dumps(body).encode(), qos=1
                    ).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    wait_until(lambda: db.rows("SELECT id FROM console_event WHERE id = ?", good["id"]), 15,
               "the good event after the bad ones")
    reasons = [json.loads(r[0])["en"] for r in db.rows(
        "SELECT reason FROM console_quarantined ORDER BY id")]
    assert len(reasons) == 5, reasons
    assert reasons[0].startswith("not JSON")
    assert "schema" in reasons[1]
    assert "topic names" in reasons[2]
    assert reasons[3].startswith("oversized")
    sizes = [r[0] for r in db.rows("SELECT size FROM console_quarantined ORDER BY id")]
    assert sizes[3] > 600_000
    officer = centre.session("officer")
    wait_until(lambda: centre.alarms(officer), 15, "alarm after bad payloads")
    cards = officer.get(f"{centre.url}/cards", timeout=10).text
    alarm_id = centre.alarms(officer)[0]["id"]
    assert f'/alarm/{alarm_id}/snapshot.jpg' in cards
    picture = officer.get(f"{centre.url}/alarm/{alarm_id}/snapshot.jpg", timeout=10)
    assert picture.headers["Content-Type"] == "image/jpeg"
    assert picture.content == jpeg.tobytes()
    # A real station's alarm still gets through.
    s1 = stations("s1")
    press(s1)
    wait_until(lambda: len(centre.alarms(officer)) == 2, 15, "alarm from a real station")
    # Shown to the admin (and the technician), not to a duty officer.
    admin = centre.session("admin")
    page = admin.get(f"{centre.url}/quarantine", timeout=10)
    assert page.ok and "过大" in page.text and "不是有效的 JSON" in page.text  # Chinese first
    page = admin.get(f"{centre.url}/quarantine", cookies={"django_language": "en"}, timeout=10)
    assert page.ok and "oversized" in page.text and "not JSON" in page.text
    assert officer.get(f"{centre.url}/quarantine", timeout=10).status_code == 403


def test_escalation_fires_each_step_once_on_an_injected_clock(centre, db, stations):  # type: ignore[no-untyped-def]
    s1 = stations("s1")
    press(s1)
    officer = centre.session("officer")
    alarm = wait_until(lambda: centre.alarms(officer), 15, "alarm")[0]
    fired = centre.python(f"""
from datetime import timedelta
from pingan_centre.console import escalation
from pingan_centre.console.config import Step
from pingan_centre.console.models import Alarm
alarm = Alarm.objects.get(pk={alarm['id']})
ladder = (Step(60, "louder", ("log",), True), Step(180, "leader", ("log", "test")))
heard = []
notifiers = {{"log": lambda m: None, "test": heard.append}}
t0 = alarm.raised_at
counts = [escalation.tick(t0 + timedelta(seconds=s), ladder, notifiers)
          for s in (30, 59, 60, 61, 120, 179, 180, 181, 600, 600)]
print(json.dumps({{"counts": counts, "heard": heard}}))
""")
    assert fired["counts"] == [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    assert [m["step"] for m in fired["heard"]] == ["leader"]
    assert fired["heard"][0]["waited_s"] == 180
    steps = db.rows("SELECT step FROM console_escalationfired WHERE alarm_id = ? ORDER BY id",
                    alarm["id"])
    assert [s[0] for s in steps] == ["louder", "leader"]
    assert centre.alarms(officer)[0]["escalation"] == 2
    # Acknowledged alarms do not climb.
    assert centre.post(officer, f"/alarm/{alarm['id']}/ack").ok
    again = centre.python(f"""
from datetime import timedelta
from pingan_centre.console import escalation
from pingan_centre.console.config import Step
from pingan_centre.console.models import Alarm
alarm = Alarm.objects.get(pk={alarm['id']})
ladder = (Step(60, "louder"), Step(180, "leader"), Step(300, "county"))
print(json.dumps(escalation.tick(alarm.raised_at + timedelta(hours=1), ladder, {{}})))
""")
    assert again == 0


def test_centre_restart_while_stations_send_nothing_missed_nothing_twice(  # type: ignore[no-untyped-def]
        centre, db, stations):
    s1, s2 = stations("s1"), stations("s2")
    sent: list[str] = []
    officer = centre.session("officer")

    def burst(n: int) -> None:
        for i in range(n):
            st = s1 if i % 2 else s2
            sent.append(st.buttons.broadcast_pressed(0.0).result(5).id)

    burst(40)
    centre.kill()  # kill -9 mid-stream
    burst(40)
    sent.append(press(s1))  # an alarm while the centre is down
    burst(20)
    centre.start()
    burst(20)
    sent.append(press(s1))  # a second press: joins the first
    wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_event WHERE type IN "
                               "('button.broadcast', 'alarm.panic')")[0][0] >= len(sent), 30,
               "every event stored")
    ids = {r[0] for r in db.rows("SELECT id FROM console_event WHERE type IN "
                                 "('button.broadcast', 'alarm.panic')")}
    assert ids == set(sent)
    alarms = centre.alarms(officer)
    assert len(alarms) == 1 and alarms[0]["presses"] == 2
    raised = db.rows("SELECT COUNT(*) FROM console_transition WHERE action = 'raise'")
    assert raised[0][0] == 1


def selftest_event(cfg: Config, results: list[SelftestResult]) -> Selftest:
    return Selftest(**stamp(), station=cfg.station.id, township=cfg.station.township,
                    payload=SelftestPayload(passed=all(r.status != "fail" for r in results),
                                            by="technician", results=results))


def test_station_grid_online_offline_and_silent(centre, db, broker, stations, township):  # type: ignore[no-untyped-def]
    s1 = stations("s1")
    s2 = stations("s2")
    tech = centre.session("tech")
    wait_until(lambda: len(db.rows("SELECT name FROM console_station WHERE online = ?",
                                   True)) == 2, 15, "both online")
    # The Last Will, exactly as the broker would publish it for s1 (ts = null), marks it
    # offline; s1's next state (it is still connected) brings it back online.
    will = s1.uplink._client.will_payload
    assert json.loads(will)["ts"] is None
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish(f"pingan/v1/{centre.township}/s1/state", will, qos=1).wait_for_publish(5)
    wait_until(lambda: db.rows("SELECT online FROM console_station WHERE name = 's1'")[0][0]
               in (False, 0), 15, "s1 offline by its will")
    s1.uplink.request_state()
    wait_until(lambda: db.rows("SELECT online FROM console_station WHERE name = 's1'")[0][0]
               in (True, 1), 15, "s1 online again")
    pub.loop_stop()
    pub.disconnect()
    s2.stop()  # a clean stop publishes online: false itself
    wait_until(lambda: db.rows("SELECT online FROM console_station WHERE name = 's2'")[0][0]
               in (False, 0), 15, "s2 offline")
    page = tech.get(f"{centre.url}/stations", timeout=10).text
    assert 'id="st-s1"' in page and 'class="h-online" id="st-s1"' in page
    assert 'class="h-offline" id="st-s2"' in page
    only = tech.get(f"{centre.url}/stations?village=西村", timeout=10).text
    assert 'id="st-s2"' in only and 'id="st-s1"' not in only
    offline = tech.get(f"{centre.url}/stations?problem=offline", timeout=10).text
    assert 'id="st-s2"' in offline and 'id="st-s1"' not in offline
    # An on-site self-test (the event `pingan-edge selftest` stores) shows when and how.
    checks = [SelftestResult(check="alarm_led", status="pass"),
              SelftestResult(check="broker", status="fail", detail="refused")]
    s1.outbox.append(selftest_event(s1.config, checks))
    wait_until(lambda: db.rows("SELECT last_selftest_passed FROM console_station "
                               "WHERE name = 's1'")[0][0] in (False, 0), 15, "selftest stored")
    page = tech.get(f"{centre.url}/stations", timeout=10).text
    assert "✗ 未通过" in page.split('id="selftest-s1"')[1].split("</td>")[0]
    # Silence: no word from s1 for longer than stale_after_s shows it as such.
    centre.python("""
from datetime import timedelta
from django.utils import timezone
from pingan_centre.console.models import Station
Station.objects.filter(pk="s1").update(last_seen=timezone.now() - timedelta(hours=1))
print("null")
""")
    assert 'class="h-silent" id="st-s1"' in tech.get(f"{centre.url}/stations", timeout=10).text
    assert s1.uplink.connected


def test_a_burst_larger_than_the_queue_is_stored_whole(centre, db, broker):  # type: ignore[no-untyped-def]
    """More in flight than the ingest queue holds: back-pressure, nothing dropped."""
    t = centre.township
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    ids = []
    infos = []
    for i in range(3000):
        st = f"b{i % 50:02d}"
        event = {"type": "button.broadcast", "id": str(uuid.uuid4()), "station": st,
                 "township": t, "seq": i // 50 + 1, "priority": 2,
                 "ts": "2026-11-23T10:00:00.000Z", "clock_synced": True,
                 "payload": {"button": "broadcast", "source": "simulator", "held_s": 0.2}}
        ids.append(event["id"])
        infos.append(pub.publish(f"pingan/v1/{t}/{st}/events", json.dumps(event), qos=1))
        if i % 7 == 0:  # at-least-once: some arrive twice
            infos.append(pub.publish(f"pingan/v1/{t}/{st}/events", json.dumps(event), qos=1))
    for info in infos:
        info.wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()
    wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_event")[0][0] >= len(ids), 60,
               "every event of the burst")
    assert {r[0] for r in db.rows("SELECT id FROM console_event")} == set(ids)
    assert db.rows("SELECT COUNT(*) FROM console_quarantined")[0][0] == 0
    assert "dropped" not in centre.log.read_text(encoding="utf-8")


def test_two_centre_processes_share_the_work_and_fire_each_rung_once(  # type: ignore[no-untyped-def]
        tmp_path, db, broker, township, stations):
    """Redundancy: two centres in one share group on one database. Every event is stored
    once, a press makes one alarm, and the ladder's rung fires once, not once per process."""
    ladder = '[[escalation.steps]]\nafter_s = 1\nname = "louder"\nnotify = ["log"]\n'
    centres = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        centres.append(Centre(tmp_path / name, db, broker.port, township, toml=ladder).start())
    try:
        s1, s2 = stations("s1"), stations("s2")
        sent = [st.buttons.broadcast_pressed(0.0).result(5).id
                for _ in range(40) for st in (s1, s2)]
        sent.append(press(s1))
        wait_until(lambda: db.rows("SELECT COUNT(*) FROM console_event WHERE type IN "
                                   "('button.broadcast', 'alarm.panic')")[0][0] >= len(sent),
                   30, "every event stored")
        ids = [r[0] for r in db.rows("SELECT id FROM console_event WHERE type IN "
                                     "('button.broadcast', 'alarm.panic')")]
        assert sorted(ids) == sorted(sent)
        officer = centres[0].session("officer")
        wait_until(lambda: centres[0].alarms(officer)
                   and centres[0].alarms(officer)[0]["escalation"] == 1, 15, "escalated")
        time.sleep(2.5)  # both tickers have run past the rung several times
        assert db.rows("SELECT COUNT(*) FROM console_escalationfired")[0][0] == 1
        assert db.rows("SELECT COUNT(*) FROM console_transition WHERE action = 'escalate'"
                       )[0][0] == 1
        assert len(centres[1].alarms(centres[1].session("officer"))) == 1
    finally:
        for c in centres:
            c.stop()
