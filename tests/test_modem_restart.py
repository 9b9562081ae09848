"""An alarm SMS survives the station: `python -m pingan_sim run` as a real process (its
panic button pressed over the control socket), killed with
SIGKILL or stopped cleanly (SIGTERM) at each step of a two-number, two-part send, then
started again. Every duty number ends with a complete text (joined as a phone joins
concatenated parts), and the township hears of every part that may have come twice.

The modem is a simulated Huawei ME909s on a pseudo-terminal that outlives the station
(status lines inside every reply), held at the chosen step: before the `> ` prompt of a
submission (its PDU not yet written: not sent, nothing in doubt) or after its PDU arrived
and before the `+CMGS` answer (the modem sends it anyway, as a real one does when its
host dies: in doubt, sent again, counted)."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, schema, station_toml, wait_until

from edge.modem.fallback import short_code
from edge.unit.control import request
from pingan_sim.localbroker import free_port
from pingan_sim.modem import ModemSim, complete_texts, copies

DUTY = ["+8613800138000", "13912345678"]
# Submissions in order: DUTY[0] parts 1 and 2, then DUTY[1] parts 1 and 2.
WHO = {1: DUTY[0], 2: DUTY[0], 3: DUTY[1], 4: DUTY[1]}
STEPS = [("prompt", 1), ("answer", 1), ("prompt", 2), ("answer", 2), ("answer", 3),
         ("accepted", 4)]


def write_config(path: Path, data: Path, port: int, sim: ModemSim, station: str) -> None:
    toml = station_toml(
        data, port, station, buttons={"panic_hold_s": 0.0}, log={"level": "info"},
        modem={"enabled": True, "port": sim.path, "sms_after_s": 0.0, "duty_numbers": DUTY,
               "command_timeout_s": 1.0, "poll_s": 60.0})
    # Named, so that the text is two parts.
    path.write_text(toml.replace("[station]\n", '[station]\nname = "平安站一号"\n'
                                                 'village = "石桥村"\n', 1))


def parts_in_db(data: Path) -> dict[tuple[str, int], str]:
    with sqlite3.connect(f"file:{data / 'sms.db'}?mode=ro", uri=True) as db:
        return {(n, i): s for n, i, s in db.execute("SELECT number, idx, state FROM sms_part")}


def latest_sms_event(township: Any, alarm_id: str) -> dict[str, Any] | None:
    found = [e for e in township.unique_events()
             if e["type"] == "alarm.sms" and e["payload"]["alarm_id"] == alarm_id]
    return max(found, key=lambda e: e["seq"]) if found else None


@pytest.mark.parametrize("how", ["kill", "stop"])
@pytest.mark.parametrize(("step", "n"), STEPS)
def test_sms_completed_after_a_restart_at_every_step(broker, township_factory, tmp_path,
                                                     how, step, n):
    station = f"v-sms-{how}-{step}{n}"
    sim = ModemSim("ME909s", report_status=0)
    sim.chatter = list(sim.spec["status_lines"])
    config, data = tmp_path / "station.toml", tmp_path / "data"
    daemon = restarted = None
    try:
        # Run 1: the uplink is down (nothing listens on its port); the alarm goes by SMS.
        write_config(config, data, free_port(), sim, station)
        daemon = Daemon(config, simulated=True)
        daemon.wait_logged("modem.ready", 20)
        if step == "accepted":
            sim.report_status = None  # the reports come after the restart
        else:
            sim.hold_at = (step, n)
        request(data / "control.sock", {"op": "press", "button": "panic"})
        if step == "accepted":
            wait_until(lambda: list(parts_in_db(data).values()) == ["accepted"] * 4, 20,
                       "every part accepted")
        else:
            assert sim.held.wait(20), f"held at {step} {n}"
        alarm_id = next(e["id"] for e in daemon.logged("event.accepted")
                        if e["type"] == "alarm.panic")
        daemon.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        assert daemon.finish() == (-signal.SIGKILL if how == "kill" else 0)
        # The held PDU: written (answer) → the modem sends it although no one listens.
        in_doubt = {WHO[n]: 1} if step == "answer" else {}
        before = len(sim.submitted)
        sim.release()
        if step == "answer":
            wait_until(lambda: len(sim.submitted) == before + 1, 5, "the held PDU sent")

        # Run 2: the uplink is up. What was not accepted goes again, same text and code.
        township = township_factory(broker.port)
        write_config(config, data, broker.port, sim, station)
        sim.report_status = 0
        restarted = Daemon(config)
        wait_until(lambda: set(complete_texts(sim)) == set(DUTY), 30, "both texts complete")
        texts = complete_texts(sim)
        code = short_code(alarm_id)
        for number in DUTY:
            (text,) = texts[number]
            assert f"代码 {code}" in text and f"Code {code}" in text
        assert copies(sim) == {number: in_doubt.get(number, 0) for number in DUTY}
        if step == "accepted":
            restarted.wait_logged("modem.ready", 20)
            for s in sim.submitted:  # the delivery reports reach the new process
                sim.report(s.reference, WHO[sim.submitted.index(s) + 1])
        # The township: the alarm, and how its SMS went, duplicates included.
        wait_until(lambda: any(e["id"] == alarm_id for e in township.unique_events()), 20)

        def settled() -> dict[str, Any] | None:
            event = latest_sms_event(township, alarm_id)
            done = event is not None and all(
                r["status"] in ("submitted", "delivered") and r["parts_accepted"] == 2 == r["parts"]
                for r in event["payload"]["recipients"])
            return event if done else None

        event = wait_until(settled, 20, "alarm.sms: every part accepted")
        schema("event").validate(event)
        recipients = event["payload"]["recipients"]
        assert [r["number"] for r in recipients] == DUTY
        assert {r["number"]: r["resent"] for r in recipients} == {
            number: in_doubt.get(number, 0) for number in DUTY}
        if step == "accepted":  # reports for parts the killed process sent are matched
            wait_until(lambda: [r["status"] for r in latest_sms_event(township, alarm_id)[
                "payload"]["recipients"]] == ["delivered", "delivered"], 10, "delivered")
            assert sim.count("AT+CMGS") == 4, "nothing sent twice"
        if in_doubt:
            assert restarted.logged("sms.resent")
    finally:
        for d in (daemon, restarted):
            if d is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
                d.finish()
        sim.close()
