"""A 4G modem that speaks AT over a real pseudo-terminal pair.

The code under test opens `sim.path` (e.g. /dev/pts/7) exactly as it opens /dev/ttyUSB2
on a unit. Profiles: a Quectel EC25 and EG25-G, a SIMCom SIM7600, a Huawei ME909s, a
Fibocom L610 and a no-name modem ("generic"), each with its vendor's habits (boot
notices, ICCID command, its answer to a command it does not know, its reset command).
Faults and habits on demand: slow replies, URCs in the middle of a reply, status lines
(`chatter`) inside every reply and at any moment, +CMS ERROR (one, or a script per
submission), hanging until the profile's reset or until a power cycle (through a
gpiozero MockFactory pin), resetting by itself, changing profile mid-run (`become`),
holding at a chosen step of an SMS submission (`hold_at`), vanishing, and the EC25's
delivery reports announced as +CDSI: "SM" but stored in "SR". With `phones_file`, what
the phones received is appended there as text (`pingan-sim run`: watch the SMS land).

Status reports and incoming SMS-DELIVER PDUs are built here by hand, and the SMS-SUBMIT
PDUs the station sends are kept raw for the tests to decode with another library.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsmmodem import pdu as gsm_pdu

SCA = "0891683108200105F0"  # +8613800250500, a China Mobile service centre
SCTS = "62113202030023"  # 2026-11-23 20:30:00 +08:00

PROFILES: dict[str, dict[str, Any]] = {
    "EC25": {
        "ATI": ["Quectel", "EC25", "Revision: EC25EFAR06A06M4G"],
        "AT+CGMM": ["EC25"],
        "AT+QCCID": ["+QCCID: 89860012345678901234"],
        'AT+QENG="servingcell"': ['+QENG: "servingcell","NOCONN","LTE","FDD",460,00,1A2D001,'
                                  '123,1650,3,5,5,1234,-95,-11,-65,12,-'],
        "boot": ["RDY", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE"],
    },
    "SIM7600": {
        "ATI": ["Manufacturer: SIMCOM INCORPORATED", "Model: SIMCOM_SIM7600G-H",
                "Revision: LE20B04SIM7600G22", "IMEI: 862636050000000"],
        "AT+CGMM": ["SIMCOM_SIM7600G-H"],
        "AT+CICCID": ["+ICCID: 89860098765432109876"],
        "AT+CPSI?": ["+CPSI: LTE,Online,460-00,0x1A2D,12345678,123,EUTRAN-BAND3,1650,5,5,"
                     "-9,-88,-60,15"],
        "boot": ["RDY", "+CPIN: READY", "SMS DONE", "PB DONE"],
    },
    "EG25-G": {
        "ATI": ["Quectel", "EG25", "Revision: EG25GGBR07A08M2G"],
        "AT+CGMM": ["EG25"],
        "AT+QCCID": ["+QCCID: 89860012345678901235"],
        'AT+QENG="servingcell"': ['+QENG: "servingcell","NOCONN","LTE","FDD",460,00,1A2D002,'
                                  '77,1300,3,5,5,1234,-101,-12,-70,8,-'],
        "boot": ["RDY", "+CFUN: 1", "+CPIN: READY", "+QUSIM: 1", "+QIND: SMS DONE",
                 "+QIND: PB DONE"],
        "status_lines": ['+QIND: "csq",20,99'],
    },
    # Huawei: status lines at any moment, COMMAND NOT SUPPORT, ^SYSSTART after a reset,
    # AT^RESET, the ICCID as the SIM stores it (nibble-swapped), ^HCSQ in steps.
    "ME909s": {
        "ATI": ["Manufacturer: Huawei Technologies Co., Ltd.", "Model: ME909s-821",
                "Revision: 11.617.01.00.00", "IMEI: 867223020000000",
                "+GCAP: +CGSM,+DS,+ES"],
        "AT+CGMM": ["ME909s-821"],
        "AT^ICCID?": ["^ICCID: 98680021436587092143"],
        "AT^HCSQ?": ['^HCSQ: "LTE",50,46,111,22'],
        "boot": ["^SYSSTART"],
        "reset": "AT^RESET",
        "unsupported": "COMMAND NOT SUPPORT",
        "status_lines": ["^RSSI: 14", '^HCSQ: "LTE",34,40,100,20',
                         "^NWTIME: 26/12/06,10:20:31+32,00", "^MODE: 17,17"],
    },
    "Fibocom": {
        "ATI": ["Fibocom", "L610", "Revision: 16000.1000.00.96.20.12"],
        "AT+CGMM": ["L610"],
        "AT+CCID": ["+CCID: 89860012345678901236"],
        "boot": ["+SIM READY"],
        "reset": "AT+CFUN=15",
    },
    # No notice at all after a reset: only an answer to AT tells it is back.
    "generic": {
        "ATI": ["Manufacturer: ACME", "Model: M1", "Revision: 1.0"],
        "AT+CGMM": ["M1"],
        "AT+CCID": ["89860012345678901237"],
        "boot": [],
    },
}
ICCID_ON_SIM = "98680021436587092143"  # 89860012345678901234, as EF_ICCID stores it


def bcd(number: str) -> tuple[int, int, str]:
    digits = number.lstrip("+")
    padded = digits + ("F" if len(digits) % 2 else "")
    return (len(digits), 0x91 if number.startswith("+") else 0x81,
            "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2)))


def status_report(reference: int, number: str, status: int = 0) -> tuple[int, str]:
    """(TPDU length, hex) of an SMS-STATUS-REPORT."""
    n, toa, digits = bcd(number)
    tpdu = f"06{reference:02X}{n:02X}{toa:02X}{digits}{SCTS}{SCTS}{status:02X}"
    return len(tpdu) // 2, SCA + tpdu


def deliver(sender: str, text: str, *, gsm7: bool = False,
            part: tuple[int, int, int] | None = None) -> tuple[int, str]:
    """(TPDU length, hex) of an SMS-DELIVER from `sender`; `part` = (ref, count, number)."""
    n, toa, digits = bcd(sender)
    udh = bytes([5, 0, 3, *part]) if part else b""
    first = 0x04 | (0x40 if part else 0)
    if gsm7:
        assert not part
        septets = gsm_pdu.encodeGsm7(text)
        ud, udl, dcs = bytes(gsm_pdu.packSeptets(septets)), len(septets), 0x00
    else:
        ud = udh + text.encode("utf-16-be")
        udl, dcs = len(ud), 0x08
    tpdu = (f"{first:02X}{n:02X}{toa:02X}{digits}00{dcs:02X}{SCTS}{udl:02X}"
            + ud.hex().upper())
    return len(tpdu) // 2, SCA + tpdu


@dataclass
class Submitted:
    length: int
    pdu: str
    reference: int
    at: float


class ModemSim:
    def __init__(self, profile: str = "EC25", *, sim: str = "READY", cdsi_quirk: bool = False,
                 report_status: int | None = 0, report_delay_s: float = 0.05,
                 slow_s: float = 0.0, rdy_delay_s: float = 0.2, power_pin: Any = None,
                 phones_file: Path | None = None) -> None:
        self.profile = profile
        # What the phones received, appended as text (bin/sim: watch the SMS land).
        self.phones_file = phones_file
        self.spec = PROFILES[profile]
        self.sim = sim
        self.cdsi_quirk = cdsi_quirk
        self.report_status = report_status
        self.report_delay_s = report_delay_s
        self.slow_s = slow_s
        self.rdy_delay_s = rdy_delay_s
        self.power_pin = power_pin
        self.hang: str | None = None  # "cfun": until AT+CFUN=1,1; "power": until power cycle
        self.cms_error: str | None = None  # the next AT+CMGS answers this
        self.commands: list[str] = []
        self.holding = threading.Event()
        self.submitted: list[Submitted] = []
        self.store: dict[str, dict[int, str]] = {"SM": {}, "SR": {}}
        self.mid_reply: list[str] = []  # URC lines slipped into the next multi-line reply
        # Status lines slipped in after every reply line, before every final result and
        # before the SMS prompt, one after another (a Huawei's ^RSSI, a 10 KB junk line).
        self.chatter: list[str] = []
        self._chatter_at = 0
        # +CMS ERROR per SMS submission, in order: None accepts, a line refuses.
        self.cms_script: list[str | None] = []
        # ("prompt", n): stop before the "> " for the n-th AT+CMGS; ("answer", n): stop
        # after the n-th PDU arrived, before its +CMGS answer. `held` says it stopped;
        # `release()` goes on (the held PDU is then accepted, as a modem does when its
        # host dies).
        self.hold_at: tuple[str, int] | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._phone_parts: dict[tuple[str, int, int], dict[int, str]] = {}
        self._cmgs_seen = 0
        self._bodies = 0
        self._mem = "SM"
        self._echo = True
        self._cnmi_ds = 0
        self._mr = 0
        self._off = False
        self._lock = threading.RLock()
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._timers: list[threading.Timer] = []
        self._thread = threading.Thread(target=self._run, name="modem-sim", daemon=True)
        self._thread.start()

    # --- test controls ---------------------------------------------------------------

    def close(self) -> None:
        self._stop.set()
        for t in self._timers:
            t.cancel()
        self._thread.join(2)
        for fd in (self.master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self._slave = -1

    def vanish(self) -> None:
        """Unplugged: the pty goes away under the reader."""
        self.close()

    def reset(self) -> None:
        """The modem restarts by itself (brown-out, firmware watchdog)."""
        self._boot()

    def become(self, profile: str) -> None:
        """New firmware, new habits: the modem restarts as `profile`."""
        with self._lock:
            self.profile = profile
            self.spec = PROFILES[profile]
        self._boot()

    def release(self) -> None:
        self.hold_at = None
        self.held.clear()
        self._release.set()

    def _hold(self, step: str, n: int) -> None:
        if self.hold_at == (step, n):
            self._release.clear()
            self.held.set()
            while not self._release.wait(0.05) and not self._stop.is_set():
                pass

    def _chatter(self) -> str:
        if not self.chatter:
            return ""
        line = self.chatter[self._chatter_at % len(self.chatter)]
        self._chatter_at += 1
        return f"\r\n{line}\r\n"

    def count(self, prefix: str) -> int:
        with self._lock:
            return sum(1 for c in self.commands if c.startswith(prefix))

    def receive(self, sender: str, text: str, **kw: Any) -> int:
        """An SMS arrives: stored in "SM", announced by +CMTI."""
        _, hexpdu = deliver(sender, text, **kw)
        with self._lock:
            index = max(self.store["SM"], default=0) + 1
            self.store["SM"][index] = hexpdu
        self._send(f'\r\n+CMTI: "SM",{index}\r\n')
        return index

    def report(self, reference: int, number: str, status: int = 0) -> None:
        length, hexpdu = status_report(reference, number, status)
        if self.cdsi_quirk:
            with self._lock:
                index = max(self.store["SR"], default=0) + 1
                self.store["SR"][index] = hexpdu
            self._send(f'\r\n+CDSI: "SM",{index}\r\n')
        elif self._cnmi_ds == 1:
            self._send(f"\r\n+CDS: {length}\r\n{hexpdu}\r\n")

    # --- the wire --------------------------------------------------------------------

    def _send(self, text: str) -> None:
        if self.master < 0 or self._off:
            return
        with contextlib.suppress(OSError):
            os.write(self.master, text.encode("utf-8"))

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        t = threading.Timer(delay, fn, args)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _run(self) -> None:
        buf = b""
        body: str | None = None  # collecting the PDU after "> "
        pending_cmgs = 0
        was_on = True
        while not self._stop.is_set():
            if self.power_pin is not None:
                on = not self.power_pin.state  # relay energised = supply cut
                if on != was_on:
                    was_on = on
                    self._off = not on
                    if on:
                        self.hang = None
                        self._later(self.rdy_delay_s, self._boot)
            try:
                ready, _, _ = select.select([self.master], [], [], 0.02)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                continue
            if self._off:
                continue
            buf += data
            while buf:
                if body is not None:
                    end = min((i for i in (buf.find(b"\x1a"), buf.find(b"\x1b")) if i >= 0),
                              default=-1)
                    if end < 0:
                        break
                    cancelled = buf[end] == 0x1b
                    body += buf[:end].decode("latin-1")
                    buf = buf[end + 1:]
                    if not cancelled:
                        self._submit(pending_cmgs, body)
                    body = None
                    continue
                end = buf.find(b"\r")
                if end < 0:
                    break
                # ESC and Ctrl-Z outside an SMS body are ignored, as by a modem.
                raw = buf[:end].replace(b"\x1b", b"").replace(b"\x1a", b"")
                line = raw.decode("latin-1").strip()
                buf = buf[end + 1:].lstrip(b"\n")
                if not line:
                    continue
                if self._echo and not self.hang:
                    self._send(line + "\r\n")
                m = re.fullmatch(r"AT\+CMGS=(\d+)", line, re.IGNORECASE)
                if m and not self.hang:
                    with self._lock:
                        self.commands.append(line)
                        self._cmgs_seen += 1
                    self._hold("prompt", self._cmgs_seen)
                    pending_cmgs = int(m.group(1))
                    body = ""
                    self._send(self._chatter() + "\r\n> ")
                    continue
                self._command(line)

    def _reply(self, lines: list[str], final: str = "OK") -> None:
        out = []
        for i, line in enumerate(lines):
            out.append(f"\r\n{line}\r\n")
            out.append(self._chatter())
            if i == 0 and self.mid_reply:
                out.extend(f"\r\n{u}\r\n" for u in self.mid_reply)
                self.mid_reply = []
        if not lines and self.mid_reply:
            out.extend(f"\r\n{u}\r\n" for u in self.mid_reply)
            self.mid_reply = []
        self._send("".join(out))
        if self.slow_s:
            self.holding.set()  # a command's final answer is being held back
            self._stop.wait(self.slow_s)
        self._send(f"{self._chatter()}\r\n{final}\r\n")

    def _boot(self) -> None:
        with self._lock:
            self._echo = True
            self._cnmi_ds = 0
            self._mem = "SM"
            self.hang = None
        self._send("".join(f"\r\n{u}\r\n" for u in self.spec["boot"]))

    def _command(self, line: str) -> None:
        with self._lock:
            self.commands.append(line)
        cmd = line.upper()
        spec = self.spec
        reset = spec.get("reset", "AT+CFUN=1,1")
        if self.hang == "power" or (self.hang == "cfun" and cmd != reset):
            return
        if cmd == reset:
            self._reply([])
            self._later(self.rdy_delay_s, self._boot)
        elif cmd in ("AT", "AT+CMEE=1", "AT+CMGF=0", "AT+CREG=1", "AT+CEREG=1") or \
                cmd.startswith("AT+CSMP="):
            self._reply([])
        elif cmd == "ATE0":
            self._echo = False
            self._reply([])
        elif cmd.startswith("AT+CNMI="):
            self._cnmi_ds = int(cmd.split("=")[1].split(",")[3])
            self._reply([])
        elif line in spec:
            self._reply(spec[line])
        elif cmd == "AT+CPIN?":
            if self.sim == "absent":
                self._reply([], "+CME ERROR: 10")
            else:
                self._reply([f"+CPIN: {self.sim}"])
        elif cmd.startswith("AT+CPMS="):
            self._mem = line.split("=")[1].split(",")[0].strip('"')
            self._reply(["+CPMS: 0,50,0,50,0,50"])
        elif cmd == "AT+CSQ":
            self._reply(["+CSQ: 20,99"])
        elif cmd == "AT+CREG?":
            self._reply(["+CREG: 1,1"])
        elif cmd == "AT+CEREG?":
            self._reply(["+CEREG: 1,1"])
        elif cmd == "AT+COPS?":
            self._reply(['+COPS: 0,0,"CHINA MOBILE",7'])
        elif cmd.startswith("AT+CMGR="):
            index = int(cmd.split("=")[1])
            found = self.store.get(self._mem, {}).get(index)
            if found is None:
                self._reply([], "+CMS ERROR: 321")
            else:
                self._reply([f"+CMGR: 0,,{(len(found) - 18) // 2}", found])
        elif cmd.startswith("AT+CMGD="):
            self.store.get(self._mem, {}).pop(int(cmd.split("=")[1]), None)
            self._reply([])
        elif cmd == "AT+CRSM=176,12258,0,0,10":  # 27.007 restricted SIM access: EF_ICCID
            self._reply([f'+CRSM: 144,0,"{ICCID_ON_SIM}"'])
        else:
            self._reply([], spec.get("unsupported", "ERROR"))

    def _submit(self, length: int, body: str) -> None:
        self._bodies += 1
        self._hold("answer", self._bodies)
        scripted = self.cms_script.pop(0) if self.cms_script else None
        if self.cms_error or scripted:
            error = scripted or self.cms_error or ""
            if not scripted:
                self.cms_error = None
            self._reply([], error)
            return
        with self._lock:
            self._mr = (self._mr + 1) & 0xFF
            mr = self._mr
            self.submitted.append(Submitted(length, body.strip(), mr, time.monotonic()))
        self._reply([f"+CMGS: {mr}"])
        if self.phones_file is not None:
            self._to_phone(body.strip())
        if self.report_status is not None:
            number = gsm_pdu.decodeSmsPdu(body.strip())["number"]
            self._later(self.report_delay_s, self.report, mr, number, self.report_status)


    def _to_phone(self, hexpdu: str) -> None:
        """Append what the phone shows to `phones_file`: a message once its last part
        came, a part that came again as such (the officer would read it twice)."""
        assert self.phones_file is not None
        try:
            d = gsm_pdu.decodeSmsPdu(hexpdu)
        except Exception as exc:  # the station sent something no phone can read
            entry = f"undecodable PDU {hexpdu[:40]}...: {exc}\n\n"
        else:
            udh = d.get("udh") or []
            ref, count, number = (udh[0].reference, udh[0].parts, udh[0].number) if udh \
                else (-1, 1, 1)
            key = (d["number"], ref, count)
            with self._lock:
                parts = self._phone_parts.setdefault(key, {})
                again = number in parts
                parts.setdefault(number, d["text"])
                whole = not again and len(parts) == count
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            if again:
                entry = f"{when} to {d['number']}: part {number}/{count} again (a duplicate)\n\n"
            elif whole:
                units = "".join(parts[i] for i in range(1, count + 1))
                text = units.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "replace")
                entry = f"{when} to {d['number']} ({count} part{'s' * (count > 1)}):\n{text}\n\n"
            else:
                return
        with contextlib.suppress(OSError), self.phones_file.open("a", encoding="utf-8") as f:
            f.write(entry)


# --- what the phones received (decoded by python-gsmmodem, not the project's codec) ---

def phones(sim: ModemSim) -> dict[str, dict[tuple[int, int], dict[int, list[str]]]]:
    """What each phone received, decoded by python-gsmmodem (not the project's codec):
    per number, per concatenated message (UDH reference, part count), each part's copies."""
    out: dict[str, dict[tuple[int, int], dict[int, list[str]]]] = {}
    for s in list(sim.submitted):
        d = gsm_pdu.decodeSmsPdu(s.pdu)
        udh = d.get("udh") or []
        key = (udh[0].reference, udh[0].parts) if udh else (-s.reference, 1)
        number = udh[0].number if udh else 1
        out.setdefault(d["number"], {}).setdefault(key, {}).setdefault(number, []).append(
            d["text"])
    return out


def complete_texts(sim: ModemSim) -> dict[str, list[str]]:
    """Per number, each message whose every part arrived, joined as a phone joins them
    (a part that came twice shows once here; `copies` counts the extra ones)."""
    out: dict[str, list[str]] = {}
    for number, messages in phones(sim).items():
        for (_, count), parts in messages.items():
            if sorted(parts) == list(range(1, count + 1)):
                assert all(len(set(seen)) == 1 for seen in parts.values()), \
                    "a part sent again differs from the first"
                units = "".join(parts[i][0] for i in range(1, count + 1))
                out.setdefault(number, []).append(
                    units.encode("utf-16-be", "surrogatepass").decode("utf-16-be"))
    return out


def copies(sim: ModemSim) -> dict[str, int]:
    """Per number, parts that reached it more than once (the extra copies)."""
    return {number: sum(len(c) - 1 for parts in messages.values() for c in parts.values())
            for number, messages in phones(sim).items()}
