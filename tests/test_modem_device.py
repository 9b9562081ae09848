"""The modem part against the simulated EC25 / SIM7600 on a real pseudo-terminal."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from conftest import wait_until
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory
from gsmmodem import pdu as gsm_pdu
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from edge.config import ModemSection
from edge.contract.events import ModemReport
from edge.health import Health
from edge.modem.device import Modem, PartResult, SmsJob
from pingan_modem import pdu
from pingan_modem.at import AtChannel, AtError, AtTimeout, LineReader, Urc, unsolicited
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


def ok(**fields: Any) -> ModemReport:
    return ModemReport(state="ok", reg="home", operator="CHINA MOBILE", tech="LTE",
                       csq_dbm=-73, **fields)


EXPECTED = {
    "EC25": ok(model="EC25", iccid="89860012345678901234", rsrp=-95.0, rsrq=-11.0, sinr=12.0),
    "EG25-G": ok(model="EG25", iccid="89860012345678901235", rsrp=-101.0, rsrq=-12.0,
                 sinr=8.0),
    "SIM7600": ok(model="SIMCOM_SIM7600G-H", iccid="89860098765432109876", rsrp=-88.0,
                  rsrq=-9.0, sinr=15.0),
    # ^HCSQ steps: RSRP -141 + 46, RSRQ -20 + 22/2, SINR -20.2 + 111/5; the ICCID as the
    # SIM stores it (nibble-swapped), read back as printed on the card.
    "ME909s": ok(model="ME909s-821", iccid="89860012345678901234", rsrp=-95.0, rsrq=-9.0,
                 sinr=2.0),
    "Fibocom": ok(model="L610", iccid="89860012345678901236"),
    "generic": ok(model="M1", iccid="89860012345678901237"),
}
# Each profile's ICCID command, and its serving-cell command if it has one.
COMMANDS = {"EC25": ("AT+QCCID", 'AT+QENG="servingcell"'),
            "EG25-G": ("AT+QCCID", 'AT+QENG="servingcell"'),
            "SIM7600": ("AT+CICCID", "AT+CPSI?"), "ME909s": ("AT^ICCID?", "AT^HCSQ?"),
            "Fibocom": ("AT+CCID", None), "generic": ("AT+CCID", None)}


@pytest.mark.parametrize("profile", list(EXPECTED))
def test_each_model_detected_and_read(run, profile):
    sim = ModemSim(profile)
    sim.chatter = list(sim.spec.get("status_lines", []))  # its habits, inside every reply
    modem = run(sim)
    wait_until(lambda: modem.report() == EXPECTED[profile], 5, f"{profile} report")
    assert modem.profile.name == profile
    # PDU mode, direct delivery reports (ds=1), reports requested in the SMS parameters.
    assert sim.count("AT+CMGF=0") == 1
    assert sim.count("AT+CNMI=2,1,0,1,0") == 1
    assert sim.count("AT+CSMP=49,") == 1
    iccid, cell = COMMANDS[profile]
    assert sim.count(iccid) == 1
    assert sim.count("AT+CRSM") == 0, "the generic ICCID read only when the vendor's fails"
    # Only the serving-cell command this model knows.
    for other in {c for _, c in COMMANDS.values() if c}:
        assert sim.count(other) == (1 if other == cell else 0), other
    assert modem.failures == 0


def test_iccid_falls_back_when_the_vendor_command_is_not_supported(run):
    sim = ModemSim("ME909s")
    sim.spec = {k: v for k, v in sim.spec.items() if k != "AT^ICCID?"}  # older firmware
    modem = run(sim)
    wait_until(lambda: modem.ready, 5)
    # AT^ICCID? and AT+CCID: COMMAND NOT SUPPORT; then 27.007 +CRSM reads EF_ICCID.
    assert [c for c in sim.commands if "ICCID" in c or "CCID" in c or "CRSM" in c] == [
        "AT^ICCID?", "AT+CCID", "AT+CRSM=176,12258,0,0,10"]
    assert modem.report().iccid == "89860012345678901234"


JUNK = "\x07" + "垃圾" * 20 + "X" * 10_240  # a 10 KB line of junk, non-ASCII first


@pytest.mark.parametrize("start", range(3))
def test_status_lines_and_junk_never_become_data(run, start):
    """A Huawei's status lines inside every reply, a 10 KB junk line, an unknown vendor's
    notices: the report is what the modem answered, and stays small."""
    sim = ModemSim("ME909s")
    sim.chatter = ["^RSSI: 14", JUNK, '^HCSQ: "LTE",34,40,100,20', "+XNEWS: 1,2",
                   "^NWTIME: 26/12/06,10:20:31+32,00", "^FUTURE_URC: 7"][start:]
    sim.mid_reply = ["^RSSI: 9"]
    modem = run(sim)
    wait_until(lambda: modem.report() == EXPECTED["ME909s"], 5, "the real values")
    assert len(msgspec.json.encode(modem.report())) < 400
    assert modem.failures == 0


def test_hostile_answers_are_bounded(run):
    """Answers that are junk themselves: nothing unbounded reaches the report."""
    sim = ModemSim("EC25")
    sim.spec = {**sim.spec, "AT+CGMM": ["Y" * 900], "ATI": ["\x01\x02", "Model: " + "Z" * 70],
                "AT+COPS?": ['+COPS: 0,0,"' + "W" * 500 + '",7'],
                "AT+QCCID": ["+QCCID: 12345"]}
    health = Health()
    modem = run(sim, health)
    wait_until(lambda: modem.ready and modem.report().csq_dbm is not None, 5)
    report = modem.report()
    # Detected as generic (nothing readable names it); no valid model, operator or ICCID
    # from these answers; the ICCID from the SIM itself.
    assert (report.model, report.operator, report.iccid) == (
        "generic", None, "89860012345678901234")
    assert len(msgspec.json.encode(report)) < 300


def test_non_ascii_notices_are_harmless(run):
    sim = ModemSim("EC25")
    modem = run(sim)
    wait_until(lambda: modem.ready, 5)
    for raw in (b'\r\n+CMTI: "SM",\xff\xfe3\r\n', '\r\n+CMTI: "S\u00e4M",1\r\n'.encode(),
                b'\r\n+CDSI: "SR",99999999999\r\n', b'\r\n+CMTI: "SM\r\n',
                b"\r\n+CDS: 9\r\n\xc0\xc1ZZ\r\n", b"\r\nRDY\x00\r\n"):
        os.write(sim.master, raw)
    got: list[tuple[list[int], str | None]] = []
    modem.send_sms(SmsJob("10086", "测试", on_done=lambda r, e: got.append((r, e))))
    wait_until(lambda: got, 5, "an SMS after the hostile notices")
    assert got == [([1], None)]
    assert sim.count("AT+CMGR") == 0, "no read of a store or index that makes no sense"
    assert modem.failures == 0 and modem.ready


@pytest.mark.parametrize("profile", ["ME909s", "Fibocom", "generic"])
def test_recovery_knows_every_ready_signal(run, profile):
    """^SYSSTART, +SIM READY, or nothing at all but an answer to AT: ready long before
    rdy_timeout_s, and modem_silent never raised."""
    sim = ModemSim(profile)
    health = Health()
    seen: list[str] = []
    health.subscribe(lambda: seen.extend(p.code for p in health.problems()))
    modem = run(sim, health, poll_s=1.0, rdy_timeout_s=20.0)
    wait_until(lambda: modem.ready, 5)
    sim.hang = "cfun"  # silent until the profile's own reset command
    reset = sim.spec.get("reset", "AT+CFUN=1,1")
    wait_until(lambda: sim.count(reset) == 1, 15, reset)
    reset_at = time.monotonic()
    wait_until(lambda: modem.ready and modem.resets >= 1, 10, "ready again")
    assert time.monotonic() - reset_at < 5.0, "it did not wait out rdy_timeout_s"
    assert "modem_silent" not in seen
    assert sim.count("AT+CNMI=") == 2


def test_a_modem_that_changes_its_habits_mid_run(run):
    """New firmware after a reset: an EC25 comes back talking like a Huawei."""
    sim = ModemSim("EC25")
    modem = run(sim)
    wait_until(lambda: modem.report() == EXPECTED["EC25"], 5)
    sim.become("ME909s")
    sim.chatter = list(sim.spec["status_lines"])
    wait_until(lambda: modem.report() == EXPECTED["ME909s"], 10, "read as a ME909s")
    assert modem.profile.name == "ME909s" and modem.resets == 1
    got: list[tuple[list[int], str | None]] = []
    modem.send_sms(SmsJob("+8613800138000", "平安报警" * 20,
                          on_done=lambda r, e: got.append((r, e))))
    wait_until(lambda: got, 5)
    assert got == [([1, 2], None)]
    time.sleep(2.1)  # signs of one restart within 2 s count once
    sim.become("SIM7600")  # and again, with RDY
    sim.chatter = []
    wait_until(lambda: modem.report() == EXPECTED["SIM7600"], 10, "read as a SIM7600")
    assert modem.failures == 0


def test_parts_reported_one_by_one_and_a_job_stops_at_a_refusal(run):
    sim = ModemSim("EC25")
    modem = run(sim)
    wait_until(lambda: modem.ready, 5)
    events: list[object] = []
    sim.cms_script = [None, "+CMS ERROR: 500"]
    modem.send_sms(SmsJob("+8613800138000", "平" * 200, reference=77, parts=[0, 1, 2],
                          before_part=lambda i: events.append(("before", i)),
                          after_part=events.append,
                          on_done=lambda r, e: events.append((r, e))))
    wait_until(lambda: len(events) == 5, 5)
    assert events == [("before", 0), PartResult(0, ref=1), ("before", 1),
                      PartResult(1, error="+CMS ERROR: 500"), ([1], "+CMS ERROR: 500")]
    # The part sent again later carries the same concatenation reference.
    events.clear()
    modem.send_sms(SmsJob("+8613800138000", "平" * 200, reference=77, parts=[1, 2],
                          on_done=lambda r, e: events.append((r, e))))
    wait_until(lambda: events, 5)
    assert events == [([2, 3], None)]
    udh = [gsm_pdu.decodeSmsPdu(s.pdu)["udh"][0] for s in sim.submitted]
    assert [(u.reference, u.parts, u.number) for u in udh] == [(77, 3, 1), (77, 3, 2),
                                                              (77, 3, 3)]


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


# --- bytes from the modem are never trusted ---------------------------------------------

HOSTILE_LINES = [
    '+CMTI: "SM",1', '+CMTI: "SM",\udcff', '+CMTI: "SM",-1', '+CMTI: "',
    '+CDSI: "XX",3', '+CDSI: "SR",70000', "+CDS: 5", "+CDS: 999", "RDY", "^SYSSTART",
    "+CPIN: READY", "+CREG: 99", "+CEREG: x,y", "^RSSI: 99", '^HCSQ: "LTE",999,-1,,',
    "^NWTIME: garbage", "+QIND: SMS DONE", "POWERED DOWN", "OK", "ERROR", "> ",
    "+CMS ERROR: 500", "COMMAND NOT SUPPORT", "+CSQ: 99,99", "+COPS: 0,0,\"", "^", "+:",
    "状态", "\x00\x01\x02", "\x1a", "\x1b", "A" * 2000, "+CMT: ,0", "0011" * 40,
]
hostile = st.one_of(
    st.sampled_from(HOSTILE_LINES).map(lambda s: s.encode("utf-8", "surrogateescape")),
    st.binary(max_size=200),
    st.text(max_size=120).map(str.encode),
)


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(hostile, max_size=40), ends=st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b"", b"\r\n> "]), min_size=40, max_size=40))
def test_line_reader_never_fails_and_stays_bounded(chunks, ends):
    reader = LineReader(max_line=256)
    for chunk, end in zip(chunks, ends, strict=False):
        for item in reader.feed(chunk + end):
            if isinstance(item, str):
                assert item and item == item.strip()
                assert "\r" not in item and "\n" not in item
                assert len(item.encode("utf-8", "surrogatepass")) <= 3 * 256
        assert len(reader._buf) <= 256


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"),
                              min_size=1, max_size=60).map(str.strip).filter(
                                  lambda s: s and not s.startswith(">")), max_size=20),
       cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_line_reader_gives_back_what_was_sent_however_it_is_cut(lines, cuts):
    data = "".join(f"\r\n{line}\r\n" for line in lines).encode()
    reader = LineReader()
    got: list[object] = []
    start = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        got.extend(reader.feed(data[start:cut]))
        start = cut
    assert got == lines


@pytest.fixture(scope="module")
def hostile_modem() -> Iterator[tuple[ModemSim, Modem]]:
    sim = ModemSim("EC25", report_status=None)
    modem = Modem(ModemSection(enabled=True, port=sim.path, command_timeout_s=1.0,
                               rdy_timeout_s=2.0, poll_s=1.0), Health())
    modem.start()
    wait_until(lambda: modem.ready, 5)
    yield sim, modem
    modem.close()
    sim.close()


# Each example runs a real modem for seconds: no shrinking (minutes), the example is
# printed as found.
@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(hostile, min_size=1, max_size=12))
def test_hostile_bytes_never_break_the_modem(hostile_modem, chunks):
    """Random bytes and hostile notices written at the station while it works: nothing
    escapes, and it still sends an SMS afterwards."""
    sim, modem = hostile_modem
    for chunk in chunks:
        os.write(sim.master, b"\r\n" + chunk + b"\r\n")
    os.write(sim.master, b"\r\n")
    # A fake OK or ERROR puts replies out of step until a timeout and the recovery
    # ladder set it right: that takes a few seconds.
    wait_until(lambda: modem.ready, 30, "ready (again)")
    got: list[tuple[list[int], str | None]] = []
    deadline = time.monotonic() + 60
    while not got or got[-1][1] is not None:  # a reset it was told of may refuse once
        assert time.monotonic() < deadline, got
        got.clear()
        assert modem.send_sms(SmsJob("10086", "测试", on_done=lambda r, e: got.append((r, e))))
        wait_until(lambda: got, 30, "the SMS answered")
    assert modem.failures == 0
    chan = modem._chan
    assert chan is not None and chan.alive and chan.reader_errors == 0
    assert len(msgspec.json.encode(modem.report())) < 400


FINAL = re.compile(r"^(OK|ERROR|\+CM[ES] ERROR:.*|NO CARRIER|COMMAND NOT SUPPORT|"
                   r"TOO MANY PARAMETERS)$")


@settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.lists(hostile, max_size=6),
       command=st.sampled_from(["AT+CSQ", "AT+COPS?", "AT+CGMM", "AT+CEREG?"]))
def test_a_reply_never_carries_a_status_line(sims, noise, command):
    """Status lines of any vendor, and anything that looks like one, inside a reply:
    the reply is only what was asked for (plain junk lines aside, which no reader can
    tell from an answer: values are validated for that)."""
    if not sims:
        sims.append(ModemSim("EC25"))
    sim = sims[0]
    urcs: list[Urc] = []
    chan = AtChannel(sim.path, urcs.append)
    try:
        chan.command("ATE0")
        # Not final results or prompts: a modem saying OK or ERROR mid-reply ends it.
        lines = [c.decode("utf-8", "replace") for c in noise]
        sim.chatter = [ln for ln in lines if not any(
            FINAL.match(p.strip()) or p.lstrip().startswith(">") for p in re.split("[\r\n]", ln))
        ] + ["^RSSI: 14", "+QIND: \"csq\",1", "^NEW: 1", "+ANYTHING: 2"]
        reply = chan.command(command)
        prefix = "+" + command[3:].rstrip("?") + ":"
        assert [ln for ln in reply if unsolicited(ln) and not ln.startswith(prefix)] == []
        expected = {"AT+CSQ": "+CSQ: 20,99", "AT+COPS?": '+COPS: 0,0,"CHINA MOBILE",7',
                    "AT+CGMM": "EC25", "AT+CEREG?": "+CEREG: 1,1"}[command]
        assert expected in reply
        assert chan.reader_errors == 0
    finally:
        sim.chatter = []
        chan.close()
