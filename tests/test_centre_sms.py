"""The township texts its own people: an alarm nobody acknowledges climbs the ladder, the
rung texts whoever the rota says is on duty through a 4G modem on the centre PC, and the
alarm's timeline shows each text queued, sent and delivered.

Real parts: a `pingan-centre serve` process, Mosquitto, a real station, an SQLite
database, and a modem on a pseudo-terminal (pingan_sim.modem, a Huawei ME909s with its
status lines inside every reply) that answers +CMGS and sends delivery reports. What the
phones received is decoded by python-gsmmodem, not by the project's codec. At least once:
a temporary +CMS ERROR on a part is retried; a centre killed with a part at the modem
sends that part again after its restart, with the same code and concatenation reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from browser_helpers import login, needs_chromium
from centre_helpers import Centre, Database, database, press, station
from conftest import wait_until
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from pingan_modem.rules import short_code
from pingan_sim.modem import ModemSim, complete_texts, copies

OFFICER_PHONE = "+8613800138001"
LEADER_PHONE = "13900139002"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    yield from database(request.param, tmp_path)


@pytest.fixture
def township() -> str:
    return f"tw{uuid.uuid4().hex[:8]}"


@pytest.fixture
def modem() -> Iterator[ModemSim]:
    sim = ModemSim("ME909s", report_delay_s=0.2)
    sim.chatter = ["^RSSI: 14", "^HCSQ: \"LTE\",34,40,100,20"]
    yield sim
    sim.close()


def sms_toml(port: str) -> str:
    return (f'\n[sms]\nport = "{port}"\nretry_max_s = 1\n\n'
            '[[escalation.steps]]\nafter_s = 1\nname = "leader"\n'
            'notify = ["log", "sms"]\nloud = true\n')


@pytest.fixture
def centre(tmp_path: Path, db: Database, broker, township: str,  # type: ignore[no-untyped-def]
           modem: ModemSim) -> Iterator[Centre]:
    c = Centre(tmp_path, db, broker.port, township, {"s1": "东村"}, toml=sms_toml(modem.path))
    c.start()
    yield c
    c.stop()


def local(dt: datetime) -> str:
    return dt.astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")


def add_shift(c: Centre, s: requests.Session, name: str, phone: str, role: str
              ) -> requests.Response:
    now = datetime.now(SHANGHAI)
    return c.post(s, "/rota", name=name, phone=phone, role=role,
                  starts=local(now - timedelta(hours=1)), ends=local(now + timedelta(hours=8)))


def timeline(db: Database, alarm_id: int) -> list[tuple[str, str]]:
    return [(a, n) for a, n in db.rows("SELECT action, note FROM console_transition "
                                       "WHERE alarm_id = ? ORDER BY at, id", alarm_id)]


def delivered_to(db: Database, alarm_id: int) -> set[str]:
    return {n.split(":")[0].split()[-1] for a, n in timeline(db, alarm_id)
            if a == "sms_delivered"}


def test_the_rota_page_is_chinese_first_and_only_leaders_change_it(centre: Centre) -> None:
    leader, viewer = centre.session("leader"), centre.session("viewer")
    page = leader.get(f"{centre.url}/rota", timeout=10)
    assert page.ok and "值班表" in page.text and "当前无人值班" in page.text
    assert add_shift(centre, leader, "张伟", OFFICER_PHONE, "duty_officer").ok
    page = viewer.get(f"{centre.url}/rota", timeout=10)
    assert "张伟" in page.text and OFFICER_PHONE in page.text and "添加班次" not in page.text
    assert add_shift(centre, viewer, "李四", LEADER_PHONE, "leader").status_code == 403
    bad = add_shift(centre, leader, "王五", "call me", "leader")
    assert bad.status_code == 400 and "请填写手机号" in bad.text
    now = datetime.now(SHANGHAI)
    backwards = centre.post(leader, "/rota", name="王五", phone=LEADER_PHONE, role="leader",
                            starts=local(now), ends=local(now - timedelta(hours=1)))
    assert backwards.status_code == 400 and "班次结束时间须晚于开始时间" in backwards.text
    leader.post(f"{centre.url}/i18n/setlang/", data={
        "language": "en", "csrfmiddlewaretoken": leader.cookies["csrftoken"]}, timeout=10)
    english = leader.get(f"{centre.url}/rota", timeout=10).text
    assert "Duty rota" in english and "On duty now" in english and "张伟" in english
    assert centre.db.rows("SELECT action FROM console_auditentry WHERE action = 'rota.add'")


def test_an_unacknowledged_alarm_texts_whoever_is_on_duty_and_the_timeline_shows_it_delivered(
        centre: Centre, db: Database, broker, township: str, modem: ModemSim,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    leader = centre.session("leader")
    assert add_shift(centre, leader, "张伟", OFFICER_PHONE, "duty_officer").ok
    assert add_shift(centre, leader, "李娜", LEADER_PHONE, "leader").ok
    # A temporary refusal of the second part the modem sees: retried, with back-off.
    modem.cms_script = [None, "+CMS ERROR: 500"]
    s1 = station(tmp_path, broker.port, "s1", township)
    try:
        press(s1)
        officer = centre.session("officer")
        alarm = wait_until(lambda: centre.alarms(officer), 15, "alarm at the centre")[0]
        wait_until(lambda: delivered_to(db, alarm["id"]) == {OFFICER_PHONE, LEADER_PHONE},
                   60, "both texts delivered in the timeline")
    finally:
        s1.stop()
    code = short_code(alarm["first_event"])
    texts = complete_texts(modem)
    for phone in (OFFICER_PHONE, LEADER_PHONE):
        got = texts.get(phone)
        assert got and len(got) == 1, texts
        assert got[0].startswith("【平安报警升级】东村 s1") and f"代码 {code}" in got[0]
        assert f"Code {code}" in got[0]
    actions = [a for a, _ in timeline(db, alarm["id"])]
    assert actions.count("sms_queued") == 2 and actions.count("sms_sent") == 2
    assert actions.count("sms_delivered") == 2 and "sms_failed" not in actions
    assert actions.index("escalate") < actions.index("sms_queued") < actions.index("sms_sent")
    retried = db.rows("SELECT attempts FROM console_smspart WHERE attempts > 1")
    assert retried == [(2,)], "the refused part was tried again, once"
    page = officer.get(f"{centre.url}/alarm/{alarm['id']}", timeout=10).text
    assert page.count("短信已送达") == 2 and "短信待发" in page
    assert "sms.retry" in centre.log.read_text(encoding="utf-8")


def test_a_centre_killed_with_a_part_at_the_modem_sends_it_again_with_the_same_code(
        centre: Centre, db: Database, broker, township: str, modem: ModemSim,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    leader = centre.session("leader")
    assert add_shift(centre, leader, "张伟", OFFICER_PHONE, "duty_officer").ok
    # The modem takes the first part's PDU and holds its answer: the centre dies then.
    modem.hold_at = ("answer", 1)
    s1 = station(tmp_path, broker.port, "s1", township)
    try:
        press(s1)
        officer = centre.session("officer")
        alarm = wait_until(lambda: centre.alarms(officer), 15, "alarm at the centre")[0]
        assert modem.held.wait(30), "the first part never reached the modem"
        assert db.rows("SELECT state FROM console_smspart WHERE idx = 0") == [("submitted",)]
        centre.kill()
        modem.release()  # the PDU the dead centre wrote goes to the network anyway
        wait_until(lambda: modem.submitted, 10, "the held part accepted by the modem")
        centre.start()
        wait_until(lambda: delivered_to(db, alarm["id"]) == {OFFICER_PHONE}, 60,
                   "the text delivered after the restart")
    finally:
        s1.stop()
    code = short_code(alarm["first_event"])
    texts = complete_texts(modem)[OFFICER_PHONE]
    assert len(texts) == 1 and f"代码 {code}" in texts[0], "one complete text, same code"
    assert copies(modem)[OFFICER_PHONE] == 1, "the part in doubt reached the phone twice"
    assert db.rows("SELECT idx, resent, state FROM console_smspart ORDER BY idx")[0] == (
        0, 1, "delivered")
    assert "sms.in_doubt" in centre.log.read_text(encoding="utf-8")
    sent = [n for a, n in timeline(db, alarm["id"]) if a == "sms_sent"]
    assert len(sent) == 1 and "1 part(s) sent again after a restart" in sent[0], sent


def test_nobody_on_duty_a_refused_number_and_the_rate_limit_are_in_the_timeline(
        tmp_path: Path, db: Database, broker, township: str,  # type: ignore[no-untyped-def]
        modem: ModemSim) -> None:
    # Two texts' worth of parts an hour (each text is two parts): the third phone waits.
    c = Centre(tmp_path, db, broker.port, township, {"s1": "东村", "s2": "西村"},
               toml=sms_toml(modem.path).replace("retry_max_s = 1", "per_hour = 4"))
    c.start()
    s1 = station(tmp_path, broker.port, "s1", township)
    s2 = station(tmp_path, broker.port, "s2", township)
    try:
        officer = c.session("officer")
        press(s1)  # the rota is empty
        first = wait_until(lambda: c.alarms(officer), 15, "first alarm")[0]
        wait_until(lambda: ("sms_failed" in [a for a, _ in timeline(db, first["id"])]), 30,
                   "the rung recorded with nobody to text")
        assert "nobody on duty" in timeline(db, first["id"])[-1][1]
        leader = c.session("leader")
        for name, phone in (("甲", "+8613700137001"), ("乙", OFFICER_PHONE),
                            ("丙", LEADER_PHONE)):
            assert add_shift(c, leader, name, phone, "duty_officer").ok
        modem.cms_script = ["+CMS ERROR: 21"]  # short message transfer rejected: for good
        press(s2)
        second = wait_until(lambda: [a for a in c.alarms(officer) if a["id"] != first["id"]],
                            15, "second alarm")[0]
        wait_until(lambda: delivered_to(db, second["id"]) == {OFFICER_PHONE}, 60,
                   "the second phone's text delivered")
        wait_until(lambda: [a for a, _ in timeline(db, second["id"])].count("sms_failed") == 2,
                   30, "the refused number and the held-back one in the timeline")
    finally:
        s1.stop()
        s2.stop()
        c.stop()
    notes = {n for a, n in timeline(db, second["id"]) if a == "sms_failed"}
    assert any("+8613700137001" in n and "+CMS ERROR: 21" in n for n in notes), notes
    assert any(LEADER_PHONE in n and "短信已达上限" in n for n in notes), notes
    rows = dict(db.rows("SELECT number, status FROM console_smsmessage WHERE alarm_id = ?",
                        second["id"]))
    assert rows == {"+8613700137001": "failed", OFFICER_PHONE: "delivered",
                    LEADER_PHONE: "held_back"}
    assert set(complete_texts(modem)) == {OFFICER_PHONE}, "only the accepted text reached a phone"
    assert "sms.nobody_on_duty" in c.log.read_text(encoding="utf-8")


def test_a_hung_modem_is_reset_and_the_text_still_goes(
        tmp_path: Path, db: Database, broker, township: str,  # type: ignore[no-untyped-def]
        modem: ModemSim) -> None:
    c = Centre(tmp_path, db, broker.port, township, {"s1": "东村"},
               toml=sms_toml(modem.path).replace(
                   "retry_max_s = 1", "retry_max_s = 1\nsms_timeout_s = 2\ncommand_timeout_s = 1"))
    c.start()
    s1 = station(tmp_path, broker.port, "s1", township)
    try:
        wait_until(lambda: "sms.modem_ready" in c.log.read_text(encoding="utf-8"), 30,
                   "the centre's modem set up")
        assert add_shift(c, c.session("leader"), "张伟", OFFICER_PHONE, "duty_officer").ok
        modem.hang = "cfun"  # answers nothing but its own reset (AT^RESET on an ME909s)
        press(s1)
        officer = c.session("officer")
        alarm = wait_until(lambda: c.alarms(officer), 15, "alarm at the centre")[0]
        wait_until(lambda: delivered_to(db, alarm["id"]) == {OFFICER_PHONE}, 60,
                   "the text delivered after the reset")
    finally:
        s1.stop()
        c.stop()
    assert modem.count("AT^RESET") >= 1
    assert len(complete_texts(modem)[OFFICER_PHONE]) == 1
    log = c.log.read_text(encoding="utf-8")
    assert "sms.modem_reset" in log and "sms.modem_failed" in log


@needs_chromium
def test_a_leader_fills_in_the_rota_in_a_real_browser(centre: Centre, tmp_path: Path,
                                                      chromium) -> None:  # type: ignore[no-untyped-def]
    driver = chromium()
    login(driver, centre, "leader")
    driver.find_element(By.LINK_TEXT, "值班表").click()
    wait_until(lambda: "当前无人值班" in driver.page_source, 10, "the empty rota")
    driver.find_element(By.ID, "id_name").send_keys("张伟")
    driver.find_element(By.ID, "id_phone").send_keys("138 0013 8001")
    Select(driver.find_element(By.ID, "id_role")).select_by_value("leader")
    now = datetime.now(SHANGHAI)
    for field, when in (("id_starts", now - timedelta(hours=1)),
                        ("id_ends", now + timedelta(hours=8))):
        driver.execute_script("arguments[0].value = arguments[1];",
                              driver.find_element(By.ID, field), local(when))
    driver.find_element(By.CSS_SELECTOR, "form.rota-form button").click()
    wait_until(lambda: "当前无人值班" not in driver.page_source, 10, "the shift added")
    on_duty = driver.find_element(By.CSS_SELECTOR, "ul.on-duty").text
    assert "张伟" in on_duty and "带班领导" in on_duty and "13800138001" in on_duty
    driver.save_screenshot(str(tmp_path / "rota.png"))


def test_an_absent_modem_never_holds_the_console_and_the_text_stays_queued(
        tmp_path: Path, db: Database, broker, township: str) -> None:  # type: ignore[no-untyped-def]
    c = Centre(tmp_path, db, broker.port, township, {"s1": "东村"},
               toml=sms_toml(str(tmp_path / "no-such-modem")))
    c.start()  # the web server and the ingest come up all the same
    s1 = station(tmp_path, broker.port, "s1", township)
    try:
        leader = c.session("leader")
        assert add_shift(c, leader, "张伟", OFFICER_PHONE, "duty_officer").ok
        press(s1)
        officer = c.session("officer")
        alarm = wait_until(lambda: c.alarms(officer), 15, "alarm at the centre")[0]
        wait_until(lambda: "sms_queued" in [a for a, _ in timeline(db, alarm["id"])], 30,
                   "the text decided and queued")
        assert c.post(officer, f"/alarm/{alarm['id']}/ack").ok, "the console answers"
    finally:
        s1.stop()
        c.stop()
    assert db.rows("SELECT state FROM console_smspart") == [("queued",), ("queued",)]
    assert "sms.modem_unavailable" in c.log.read_text(encoding="utf-8")
