"""The modem part against the simulated EC25 / SIM7600 on a real pseudo-terminal."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import wait_until
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory
from gsmmodem import pdu as gsm_pdu
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.config import ModemSection
from edge.contract.events import ModemReport
from edge.health import Health
from edge.modem import pdu
from edge.modem.at import AtChannel, AtError, AtTimeout, Urc
from edge.modem.device import Modem, SmsJob
from pingan_sim.modem import ModemSim, status_report


@pytest.fixture
def sims() -> Iterator[list[ModemSim]]:
    made: list[ModemSim] = []
    yield made
    for sim in made:
        sim.close()


@pytest.fixture
def run() -> Iterator[Any]:
    """Start a Modem on a simulator; closes both afterwards."""
    started: list[tuple[Modem, ModemSim]] = []

    def start(sim: ModemSim, health: Health | None = None, power: Any = None,
              **cfg: Any) -> Modem:
        values = {"enabled": True, "port": sim.path, "command_timeout_s": 1.0,
                  "rdy_timeout_s": 2.0, "power_off_s": 0.2, "poll_s": 60.0, **cfg}
        modem = Modem(ModemSection(**values), health or Health(), power=power)
        modem.start()
        started.append((modem, sim))
        return modem

    yield start
    for modem, sim in started:
        modem.close()
        sim.close()


@pytest.mark.parametrize(("profile", "expected"), [
    ("EC25", ModemReport(state="ok", model="EC25", iccid="89860012345678901234", reg="home",
                         operator="CHINA MOBILE", tech="LTE", csq_dbm=-73, rsrp=-95.0,
                         rsrq=-11.0, sinr=12.0)),
    ("SIM7600", ModemReport(state="ok", model="SIMCOM_SIM7600G-H",
                            iccid="89860098765432109876", reg="home", operator="CHINA MOBILE",
                            tech="LTE", csq_dbm=-73, rsrp=-88.0, rsrq=-9.0, sinr=15.0)),
])
def test_each_model_detected_and_read(run, profile, expected):
    sim = ModemSim(profile)
    modem = run(sim)
    wait_until(lambda: modem.report() == expected, 5, f"{profile} report")
    # PDU mode, direct delivery reports (ds=1), reports requested in the SMS parameters.
    assert sim.count("AT+CMGF=0") == 1
    assert sim.count("AT+CNMI=2,1,0,1,0") == 1
    assert sim.count("AT+CSMP=49,") == 1
    # Only the serving-cell command this model knows.
    assert sim.count("AT+QENG") == (1 if profile == "EC25" else 0)
    assert sim.count("AT+CPSI?") == (1 if profile == "SIM7600" else 0)


def test_urcs_in_the_middle_of_a_reply_are_kept_apart(sims):
    sim = ModemSim("EC25")
    sims.append(sim)
    urcs: list[Urc] = []
    chan = AtChannel(sim.path, urcs.append)
    try:
        chan.command("ATE0")
        length, report_pdu = status_report(7, "+8613800138000")
        sim.mid_reply = ['+CMTI: "SM",3', f"+CDS: {length}", report_pdu, "+CEREG: 1"]
        assert chan.command("AT+CSQ") == ["+CSQ: 20,99"]
        wait_until(lambda: len(urcs) == 3, 2, "three URCs")
        assert urcs == [Urc('+CMTI: "SM",3'), Urc(f"+CDS: {length}", report_pdu),
                        Urc("+CEREG: 1")]
        # ...while +CEREG as the reply to its own query is a reply.
        assert chan.command("AT+CEREG?") == ["+CEREG: 1,1"]
        with pytest.raises(AtError) as refused:
            chan.command("AT+NOSUCH")
        assert refused.value.final == "ERROR"
        sim.slow_s = 0.3
        assert chan.command("AT", timeout=2.0) == []
        with pytest.raises(AtTimeout):
            chan.command("AT", timeout=0.1)
    finally:
        chan.close()


URC_POOL = ['+CMTI: "SM",1', "RDY", "+CEREG: 5", "+CREG: 2", "+QIND: SMS DONE",
            "POWERED DOWN", '+CDSI: "SM",4']


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(urcs=["+CEREG: 5"], command="AT+CEREG?")  # same prefix as the reply
@given(urcs=st.lists(st.sampled_from(URC_POOL), max_size=6),
       command=st.sampled_from(["AT+CSQ", "AT+COPS?", "ATI", "AT+CEREG?", "AT"]))
def test_no_urc_is_lost_or_taken_for_a_reply(sims, urcs, command):
    if not sims:
        sims.append(ModemSim("EC25"))
    sim = sims[0]
    got: list[Urc] = []
    chan = AtChannel(sim.path, got.append)
    try:
        chan.command("ATE0")
        sim.mid_reply = list(urcs)
        reply = chan.command(command)
        expected = {"AT+CSQ": ["+CSQ: 20,99"], "AT+COPS?": ['+COPS: 0,0,"CHINA MOBILE",7'],
                    "ATI": ["Quectel", "EC25", "Revision: EC25EFAR06A06M4G"],
                    "AT+CEREG?": ["+CEREG: 1,1"], "AT": []}[command]
        assert reply == expected
        wait_until(lambda: len(got) >= len(urcs), 2, "every URC")
        assert [u.line for u in got] == urcs
    finally:
        chan.close()


def test_sms_sent_through_the_prompt_and_reported_delivered(run):
    sim = ModemSim("SIM7600")
    modem = run(sim)
    reports: list[pdu.StatusReport] = []
    modem.on_report = reports.append
    wait_until(lambda: modem.ready, 5)
    result: list[tuple[list[int], str | None]] = []
    text = "【平安报警】测试村：一键报警😀" * 5
    assert modem.send_sms(SmsJob("+8613800138000", text,
                                 on_done=lambda refs, err: result.append((refs, err))))
    wait_until(lambda: result, 5, "SMS submitted")
    assert result == [([1, 2], None)]
    units = "".join(gsm_pdu.decodeSmsPdu(s.pdu)["text"] for s in sim.submitted)
    assert units.encode("utf-16-be", "surrogatepass").decode("utf-16-be") == text
    assert [s.length for s in sim.submitted] == [len(s.pdu) // 2 - 1 for s in sim.submitted]
    wait_until(lambda: len(reports) == 2, 5, "two delivery reports")
    assert sorted((r.reference, r.outcome) for r in reports) == [(1, "delivered"),
                                                                  (2, "delivered")]


def test_ec25_report_announced_in_sm_is_read_from_sr(run):
    sim = ModemSim("EC25", cdsi_quirk=True)
    modem = run(sim)
    reports: list[pdu.StatusReport] = []
    modem.on_report = reports.append
    wait_until(lambda: modem.ready, 5)
    modem.send_sms(SmsJob("+8613800138000", "测试"))
    wait_until(lambda: reports, 5, "report via +CDSI")
    assert reports[0].reference == 1 and reports[0].outcome == "delivered"
    assert sim.count('AT+CPMS="SR"') == 1
    assert sim.store["SR"] == {}, "read and deleted from SR"


def test_cms_error_is_reported_to_the_sender(run):
    sim = ModemSim("EC25")
    modem = run(sim)
    wait_until(lambda: modem.ready, 5)
    sim.cms_error = "+CMS ERROR: 500"
    result: list[tuple[list[int], str | None]] = []
    modem.send_sms(SmsJob("10086", "x", on_done=lambda r, e: result.append((r, e))))
    wait_until(lambda: result, 5)
    assert result == [([], "+CMS ERROR: 500")]
    assert modem.ready, "an SMS refusal is not a modem failure"


def test_hung_modem_recovers_with_cfun(run):
    sim = ModemSim("EC25")
    health = Health()
    modem = run(sim, health, poll_s=1.0)
    wait_until(lambda: modem.ready, 5)
    sim.hang = "cfun"
    wait_until(lambda: sim.count("AT+CFUN=1,1") == 1, 15, "AT+CFUN=1,1 sent")
    wait_until(lambda: modem.ready and modem.resets >= 1, 10, "set up again after RDY")
    assert sim.count("AT+CNMI=") == 2
    assert not [p for p in health.problems() if p.code.startswith("modem_")]


def test_hung_modem_recovers_by_power_cycle_through_the_relay(run):
    factory = MockFactory()
    relay = OutputDevice(24, initial_value=False, pin_factory=factory)
    sim = ModemSim("EC25", power_pin=factory.pin(24))
    modem = run(sim, power=relay, poll_s=1.0)
    wait_until(lambda: modem.ready, 5)
    sim.hang = "power"
    wait_until(lambda: sim.count("AT+CFUN=1,1") == 1, 15, "soft reset tried first")
    wait_until(lambda: modem.ready and modem.resets >= 1, 15, "back after the power cycle")
    assert not relay.value, "relay released: the modem is powered"
    assert sim.count("AT+CNMI=") == 2
    relay.close()


def test_silent_modem_without_relay_is_a_problem_nothing_more(run):
    sim = ModemSim("EC25")
    health = Health()
    modem = run(sim, health, poll_s=1.0, rdy_timeout_s=0.5)
    wait_until(lambda: modem.ready, 5)
    sim.hang = "power"
    wait_until(lambda: any(p.code == "modem_silent" for p in health.problems()), 20,
               "modem_silent")
    assert modem.report().state == "silent"
    sim.hang = None  # it comes back by itself: the ladder, retried, finds it
    wait_until(lambda: modem.ready, 20, "ready again")
    wait_until(lambda: not health.problems(), 5)


def test_modem_that_resets_itself_is_set_up_again(run):
    sim = ModemSim("SIM7600")
    modem = run(sim)
    wait_until(lambda: modem.ready, 5)
    sim.reset()
    wait_until(lambda: sim.count("AT+CNMI=") == 2, 5, "CNMI sent again after RDY")
    wait_until(lambda: modem.ready and modem.resets == 1, 5)


def test_vanishing_and_absent_modem_are_problems(run):
    sim = ModemSim("EC25")
    health = Health()
    modem = run(sim, health)
    wait_until(lambda: modem.ready, 5)
    sim.vanish()
    wait_until(lambda: any(p.code == "modem_absent" for p in health.problems()), 5)
    assert modem.report().state == "absent"
    assert modem.alive

    health2 = Health()
    absent = Modem(ModemSection(enabled=True, port="/dev/ttyUSB-no-such-modem"), health2)
    absent.start()
    try:
        wait_until(lambda: [p.code for p in health2.problems()] == ["modem_absent"], 5)
        assert absent.send_sms(SmsJob("10086", "x")), "queued, never blocks the caller"
    finally:
        absent.close()


@pytest.mark.parametrize("sim_state", ["SIM PIN", "absent"])
def test_locked_or_missing_sim_is_a_problem(run, sim_state):
    sim = ModemSim("EC25", sim=sim_state)
    health = Health()
    modem = run(sim, health)
    wait_until(lambda: [p.code for p in health.problems()] == ["modem_sim"], 5)
    assert modem.report().state == "sim_locked"
    assert not modem.ready
    assert sim.count("AT+CMGF") == 0


def test_incoming_sms_parts_out_of_order_are_joined(run):
    sim = ModemSim("EC25")
    modem = run(sim)
    got: list[pdu.Incoming] = []
    arrived = threading.Event()
    modem.on_sms = lambda m: (got.append(m), arrived.set())
    wait_until(lambda: modem.ready, 5)
    sim.receive("+8613912345678", "站点", part=(9, 2, 2))
    sim.receive("+8613912345678", "状态", part=(9, 2, 1))
    assert arrived.wait(5)
    assert got == [pdu.Incoming("+8613912345678", "状态站点", None)]
    wait_until(lambda: sim.store["SM"] == {}, 2, "read messages deleted")
