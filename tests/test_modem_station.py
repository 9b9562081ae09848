"""The modem in a real station: SMS fallback for alarms while the uplink is down, the
status SMS, health telemetry, and a station whose modem is gone."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import make_config, schema, wait_until
from gsmmodem import pdu as gsm_pdu

from edge.config import Config
from edge.contract.events import AlarmPanic, PanicPayload, decode_event, stamp
from edge.modem.fallback import alarm_text, short_code
from edge.station import Station
from pingan_modem import pdu
from pingan_sim.localbroker import free_port
from pingan_sim.modem import ModemSim, complete_texts, copies

DUTY = ["+8613800138000", "13912345678"]


@pytest.fixture
def sim() -> Iterator[ModemSim]:
    s = ModemSim("EC25")
    yield s
    s.close()


def modem_cfg(sim: ModemSim, **over: Any) -> dict[str, Any]:
    return {"enabled": True, "port": sim.path, "sms_after_s": 0.5, "duty_numbers": DUTY,
            "command_timeout_s": 1.0, **over}


STATION = {"name": "平安站一号", "village": "石桥村"}


def config(tmp_path: Path, port: int, station_id: str = "v001", **sections: Any) -> Config:
    cfg = make_config(tmp_path / "station", port, **sections)
    return msgspec.structs.replace(cfg, station=msgspec.structs.replace(
        cfg.station, id=station_id, **STATION))


@pytest.fixture
def start_station(tmp_path: Path) -> Iterator[Callable[..., Station]]:
    """Like conftest's, with the station's name and village set."""
    started: list[Station] = []

    def start(port: int, station_id: str = "v001", **sections: Any) -> Station:
        station = Station(config(tmp_path, port, station_id, **sections))
        station.start()
        started.append(station)
        return station

    yield start
    for s in started:
        with contextlib.suppress(Exception):
            s.stop()


def sms_texts(sim: ModemSim) -> dict[str, list[str]]:
    """What each number received, each whole message joined from its parts (by UDH
    reference); messages still missing a part are left out."""
    by_message: dict[tuple[str, int, int], list[tuple[int, str]]] = {}
    for s in list(sim.submitted):
        d = gsm_pdu.decodeSmsPdu(s.pdu)
        udh = d.get("udh") or []
        key = (d["number"], udh[0].reference if udh else -s.reference,
               udh[0].parts if udh else 1)
        by_message.setdefault(key, []).append((udh[0].number if udh else 1, d["text"]))
    out: dict[str, list[str]] = {}
    for (number, _, count), parts in by_message.items():
        if len(parts) < count:
            continue  # its last part is still on the way
        units = "".join(t for _, t in sorted(parts))
        out.setdefault(number, []).append(
            units.encode("utf-16-be", "surrogatepass").decode("utf-16-be"))
    return out


def test_alarm_goes_by_sms_once_past_the_threshold_while_down_and_is_reported_later(
        own_broker, start_station, township_factory, sim, tmp_path):
    township = township_factory(own_broker.port, session="township-centre")
    station = start_station(own_broker.port, modem=modem_cfg(sim))
    wait_until(lambda: station.uplink.connected and station.modem.modem.ready, 10)

    # Link up: delivered by MQTT, never by SMS.
    up = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: any(e["id"] == up.id for e in township.events()), 5)
    time.sleep(1.0)
    assert sim.submitted == []

    own_broker.stop()
    wait_until(lambda: not station.uplink.connected, 10)
    raised = time.monotonic()
    down = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: set(sms_texts(sim)) == set(DUTY), 10, "SMS to both duty numbers")
    # Not before modem.sms_after_s (less the 1 ms resolution of the id's time stamp).
    assert sim.submitted[0].at - raised >= 0.499
    texts = sms_texts(sim)
    code = short_code(down.id)
    for number in DUTY:
        (text,) = texts[number]
        assert text.startswith("【平安报警】石桥村 平安站一号：模拟报警，")
        assert f"代码 {code}" in text and f"Code {code}" in text
    parts = len(sim.submitted) // len(DUTY)
    assert parts == 2
    wait_until(lambda: all(r["status"] == "delivered"
                           for r in station.modem.fallback.log.rows(down.id)), 5, "reports")
    sent_before_restart = len(sim.submitted)

    # A restart while still down: the SMS is not sent again.
    station.stop()
    again = Station(config(tmp_path, own_broker.port, modem=modem_cfg(sim)))
    again.start()
    try:
        wait_until(lambda: again.modem.modem.ready, 10)
        time.sleep(1.5)
        assert len(sim.submitted) == sent_before_restart

        # The link returns: the alarm, then how its SMS went.
        own_broker.start()
        wait_until(lambda: any(e["id"] == down.id for e in township.events()), 20)
        sms_events = wait_until(
            lambda: [e for e in township.unique_events() if e["type"] == "alarm.sms"
                     and all(r["status"] == "delivered" for r in e["payload"]["recipients"])],
            10, "alarm.sms delivered")
        payload = sms_events[-1]["payload"]
        assert payload["alarm_id"] == down.id and payload["code"] == code
        assert [(r["number"], r["parts"]) for r in payload["recipients"]] == [
            (n, parts) for n in DUTY]
        validator = schema("event")
        for e in township.unique_events():
            validator.validate(e)
        assert not any(e["payload"].get("alarm_id") == up.id for e in township.events()
                       if e["type"] == "alarm.sms")
    finally:
        again.stop()


def test_rate_limit_holds_back_and_counts(own_broker, start_station, sim, tmp_path):
    own_broker.stop()
    probe = AlarmPanic(station="v001", township="t01",
                       payload=PanicPayload(source="simulator", held_s=0.0), **stamp())
    parts = pdu.part_count(alarm_text(config(tmp_path, 1), probe))
    station = start_station(own_broker.port, modem=modem_cfg(
        sim, duty_numbers=DUTY[:1], sms_after_s=0.0, sms_per_hour=2 * parts))
    wait_until(lambda: station.modem.modem.ready, 10)
    alarms = [station.alarm.raise_alarm("simulator", 0.0).result(5) for _ in range(3)]
    wait_until(lambda: station.modem.fallback.held_back() == 1, 10, "one held back")
    wait_until(lambda: len(sms_texts(sim).get(DUTY[0], [])) == 2, 10, "two sent")
    def statuses() -> list[list[str]]:
        return [[r["status"] for r in station.modem.fallback.log.rows(a.id)] for a in alarms]

    wait_until(lambda: all(s == ["delivered"] for s in statuses()[:2]), 10, "two delivered")
    assert statuses()[2] == ["held_back"], "in drain order: the third is over the limit"
    assert any(p.code == "sms_rate_limited" for p in station.health.problems())
    assert station.telemetry.report().sms_held_back == 1
    time.sleep(0.5)
    assert len(sms_texts(sim)[DUTY[0]]) == 2, "the held-back alarm is not sent later"
    station.stop()
    again = start_station(own_broker.port, modem=modem_cfg(
        sim, duty_numbers=DUTY[:1], sms_after_s=0.0, sms_per_hour=2 * parts))
    assert any(p.code == "sms_rate_limited" for p in again.health.problems()), \
        "still reported after a restart"
    assert again.telemetry.report().sms_held_back == 1


def test_status_sms_answered_for_duty_numbers_only(own_broker, start_station, sim):
    own_broker.stop()
    station = start_station(own_broker.port, modem=modem_cfg(sim))
    wait_until(lambda: station.modem.modem.ready, 10)
    sim.receive("+8613700000000", "状态")
    sim.receive("+8613912345678", "状态")
    wait_until(lambda: sim.submitted, 10, "a reply")
    time.sleep(0.5)
    texts = sms_texts(sim)
    # Answered at the duty number as configured (13912345678, sent from +86...).
    assert set(texts) == {"13912345678"}, "the other sender is ignored"
    (reply,) = texts["13912345678"]
    assert reply.startswith("【平安站点状态】平安站一号：平台连接中断")
    assert "STATUS 平安站一号: link DOWN" in reply
    sim.receive("13912345678", "status please", gsm7=True)
    wait_until(lambda: len(sms_texts(sim)["13912345678"]) == 2, 10, "English ask answered")


def test_modem_gone_alarms_still_go_over_mqtt(broker, start_station, township_factory, sim):
    township = township_factory(broker.port)
    sim.vanish()
    station = start_station(broker.port, "v-nomodem", modem=modem_cfg(sim))
    wait_until(lambda: station.uplink.connected, 10)
    stored = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: any(e["id"] == stored.id for e in township.events()), 5)
    state = wait_until(lambda: [s for s in township.on("/v-nomodem/state")
                                if any(p["code"] == "modem_absent" for p in s["problems"])], 10)
    assert state[-1]["online"] is True
    assert station.status()["modem"]["state"] == "absent"


def test_health_telemetry_is_retained_small_and_valid(broker, start_station, township_factory,
                                                       sim):
    # Its own station id: the shared broker keeps other tests' retained messages.
    station = start_station(broker.port, "v-health", modem=modem_cfg(sim),
                            health={"interval_s": 1.0})
    wait_until(lambda: station.modem.modem.ready and station.uplink.connected, 10)
    topic = "pingan/v1/t01/v-health/health"
    wait_until(lambda: station.telemetry.published >= 1, 10, "a report published")
    township = township_factory(broker.port)  # subscribes after it was published
    wait_until(lambda: [r for t, _, r in township.messages if t == topic], 10, "retained")
    assert next(r for t, _, r in township.messages if t == topic) is True
    reports = wait_until(lambda: [m for t, m, _ in township.messages if t == topic
                                  and m["modem"]["csq_dbm"] is not None], 10, "with signal")
    validator = schema("health")
    for r in [m for t, m, _ in township.messages if t == topic]:
        validator.validate(r)
    report = reports[-1]
    assert report["station"] == "v-health" and report["modem"]["reg"] == "home"
    assert report["modem"]["rsrp"] == -95.0
    assert report["outbox_pending"] == 0 and report["disk_free_mb"] > 0
    assert len(json.dumps(report, ensure_ascii=False).encode()) < 700
    bad = {**report, "uptime_s": -1}
    with pytest.raises(Exception, match="-1"):
        validator.validate(bad)


def test_a_stuck_modem_never_delays_alarms_or_shutdown(broker, start_station, township_factory,
                                                      sim):
    township = township_factory(broker.port)
    station = start_station(broker.port, modem=modem_cfg(sim, command_timeout_s=30.0,
                                                         poll_s=1.0))
    wait_until(lambda: station.uplink.connected and station.modem.modem.ready, 10)
    sim.slow_s = 20.0  # every reply now takes 20 s: the modem thread sits in a command
    # (maybe one it sent just before: its answer is held back too)
    wait_until(sim.holding.is_set, 10, "the modem thread waiting in a command")
    started = time.monotonic()
    stored = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: any(e["id"] == stored.id for e in township.events()), 5)
    # The modem's reply takes 20 s: bounds far below it prove nothing waited on the modem,
    # and leave room for a loaded 2-core machine.
    assert time.monotonic() - started < 5.0, "the alarm waited for the modem"
    started = time.monotonic()
    station.stop()
    assert time.monotonic() - started < 5.0, "stop waited for the modem's reply"


# --- at least once, part by part ----------------------------------------------------------

def sms_events(station: Station, alarm_id: str) -> list[dict[str, Any]]:
    """The alarm.sms events the station has stored for `alarm_id`, in seq order."""
    out = []
    for row in station.outbox.pending({}, 1000):
        if row.type == "alarm.sms":
            event = msgspec.to_builtins(decode_event(row.body))
            if event["payload"]["alarm_id"] == alarm_id:
                out.append(event)
    return sorted(out, key=lambda e: e["seq"])


@pytest.fixture
def down_port() -> int:
    """A broker port nothing listens on: the uplink stays down."""
    return free_port()


@pytest.mark.parametrize("failing", [1, 2, 3, 4])
def test_a_temporary_error_on_each_part_in_turn_is_retried(start_station, sim, down_port,
                                                           failing):
    """Two numbers, two parts each: the `failing`-th submission is refused with +CMS
    ERROR: 500. That part alone is tried again (after ~1 s); both texts end complete,
    nothing twice."""
    sim.cms_script = [None] * (failing - 1) + ["+CMS ERROR: 500"]
    station = start_station(down_port, modem=modem_cfg(sim, sms_after_s=0.0))
    wait_until(lambda: station.modem.modem.ready, 10)
    alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: set(complete_texts(sim)) == set(DUTY), 15, "both texts complete")
    code = short_code(alarm.id)
    for number in DUTY:
        (text,) = complete_texts(sim)[number]
        assert f"代码 {code}" in text
    assert copies(sim) == dict.fromkeys(DUTY, 0)
    assert sim.count("AT+CMGS") == 5, "four parts, one of them twice"
    log = station.modem.fallback.log
    wait_until(lambda: [r["status"] for r in log.rows(alarm.id)] == ["delivered"] * 2, 10)
    failed_number = DUTY[(failing - 1) // 2]
    attempts = [[p["attempts"] for p in log.parts(alarm.id, n)] for n in DUTY]
    expected = [[1, 1], [1, 1]]
    expected[(failing - 1) // 2][(failing - 1) % 2] = 2
    assert attempts == expected
    last = wait_until(lambda: [e for e in sms_events(station, alarm.id) if all(
        r["status"] == "delivered" for r in e["payload"]["recipients"])], 10)[-1]
    assert [(r["number"], r["attempts"], r["resent"], r["parts_delivered"], r["error"])
            for r in last["payload"]["recipients"]] == [
        (n, 3 if n == failed_number else 2, 0, 2, None) for n in DUTY]
    # The township heard of the error while it was being retried.
    assert any(r["error"] == "+CMS ERROR: 500" and r["status"] == "queued"
               for e in sms_events(station, alarm.id) for r in e["payload"]["recipients"])
    schema("event").validate(last)


def test_a_permanent_error_fails_that_number_and_the_next_goes_on(start_station, sim,
                                                                   down_port):
    sim.cms_script = ["+CMS ERROR: 1"]  # RP cause 1: unassigned number
    station = start_station(down_port, modem=modem_cfg(sim, sms_after_s=0.0))
    wait_until(lambda: station.modem.modem.ready, 10)
    alarm = station.alarm.raise_alarm("simulator", 0.0).result(5)
    wait_until(lambda: set(complete_texts(sim)) == {DUTY[1]}, 15, "the second number's text")
    time.sleep(2.5)  # past the first back-offs: the first number is not tried again
    assert sim.count("AT+CMGS") == 3
    last = wait_until(lambda: [e for e in sms_events(station, alarm.id) if [
        r["status"] for r in e["payload"]["recipients"]] == ["failed", "delivered"]], 10)[-1]
    first = last["payload"]["recipients"][0]
    assert (first["error"], first["parts_accepted"], first["attempts"]) == (
        "+CMS ERROR: 1", 0, 1)
    assert not station.modem.fallback.log.active()


def test_health_stays_small_whatever_the_modem_sends(broker, start_station, township_factory):
    """Junk for a model, a long operator, 10 KB lines and another vendor's status lines:
    the retained health report stays under 1 KB."""
    sim = ModemSim("ME909s")
    try:
        sim.spec = {**sim.spec, "AT+CGMM": ["M" * 3000],
                    "ATI": ["Manufacturer: Huawei Technologies Co., Ltd.", "Model: " + "N" * 65],
                    "AT+COPS?": ['+COPS: 0,0,"' + "O" * 300 + '",7']}
        sim.chatter = ["^RSSI: 14", "X" * 10_240, '^HCSQ: "LTE",34,40,100,20', "+JUNK: 1"]
        station = start_station(broker.port, "v-junk", modem=modem_cfg(sim),
                                health={"interval_s": 1.0})
        wait_until(lambda: station.modem.modem.ready and station.uplink.connected, 10)
        township = township_factory(broker.port)
        topic = "pingan/v1/t01/v-junk/health"
        reports = wait_until(lambda: [m for t, m, _ in township.messages if t == topic
                                      and m["modem"]["csq_dbm"] is not None], 10)
        for r in reports:
            schema("health").validate(r)
            assert len(json.dumps(r, ensure_ascii=False).encode()) < 1024
        modem = reports[-1]["modem"]
        # No model fits 64 printable characters: the profile's name instead.
        assert (modem["model"], modem["operator"], modem["rsrp"]) == ("ME909s", None, -95.0)
    finally:
        sim.close()
