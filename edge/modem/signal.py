"""Reading the modem's answers about the network: pure parsing, no I/O."""

from __future__ import annotations

import csv
import re
from typing import Literal

Registration = Literal["home", "roaming", "searching", "denied", "unknown", "none"]
# +CREG / +CEREG <stat>
REGISTRATION: dict[int, Registration] = {
    0: "none", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming",
    6: "home", 7: "roaming"}


def fields(line: str) -> list[str]:
    """The comma-separated values after `+XXX: `, quotes removed."""
    _, _, rest = line.partition(":")
    return [f.strip() for f in next(csv.reader([rest.strip()]))] if rest.strip() else []


def csq_dbm(line: str) -> int | None:
    """+CSQ: <rssi>,<ber> → dBm (27.007: 0 → -113, 31 → -51, 99 unknown)."""
    try:
        rssi = int(fields(line)[0])
    except (IndexError, ValueError):
        return None
    return None if rssi == 99 or not 0 <= rssi <= 31 else -113 + 2 * rssi


def registration(line: str, query: bool) -> Registration | None:
    """+CREG: <n>,<stat>[,...] (the answer to `AT+CREG?`, `query`) or the URC
    +CREG: <stat>[,...]."""
    values = fields(line)
    try:
        stat = int(values[1] if query else values[0])
    except (IndexError, ValueError):
        return None
    return REGISTRATION.get(stat, "unknown")


def best_registration(*states: Registration | None) -> Registration | None:
    """The better of CS (+CREG) and EPS (+CEREG): an LTE-only SIM is fine on +CEREG alone."""
    order: list[Registration] = ["home", "roaming", "searching", "denied", "unknown", "none"]
    known = [order.index(s) for s in states if s is not None]
    return order[min(known)] if known else None


def operator(line: str) -> str | None:
    values = fields(line)
    return values[2] if len(values) >= 3 and values[2] else None


_ACT = {"0": "GSM", "2": "UMTS", "3": "EDGE", "4": "HSDPA", "5": "HSUPA", "6": "HSPA",
        "7": "LTE", "8": "EC-GSM", "9": "NB-IoT"}


def access_tech(line: str) -> str | None:
    values = fields(line)
    return _ACT.get(values[3]) if len(values) >= 4 else None


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def qeng_lte(line: str) -> tuple[float | None, float | None, float | None]:
    """Quectel +QENG: "servingcell",<state>,"LTE",<duplex>,<mcc>,<mnc>,<cellid>,<pcid>,
    <earfcn>,<band>,<ul_bw>,<dl_bw>,<tac>,<rsrp>,<rsrq>,<rssi>,<sinr>,... → RSRP, RSRQ,
    SINR (SINR in dB already on EC2x firmware ≥ R06)."""
    values = fields(line)
    if len(values) < 17 or values[2] != "LTE":
        return None, None, None
    return _num(values[13]), _num(values[14]), _num(values[16])


def cpsi_lte(line: str) -> tuple[float | None, float | None, float | None]:
    """SIMCom +CPSI: LTE,<op mode>,<mcc-mnc>,<tac>,<cell>,<pci>,<band>,<earfcn>,<dlbw>,<ulbw>,
    <rsrq>,<rsrp>,<rssi>,<rssnr> → RSRP, RSRQ, SINR."""
    values = fields(line)
    if len(values) < 14 or values[0] != "LTE":
        return None, None, None
    return _num(values[11]), _num(values[10]), _num(values[13])


_ICCID = re.compile(r"([0-9A-Fa-f]{18,22})")


def iccid(lines: list[str]) -> str | None:
    for line in lines:
        m = _ICCID.search(line)
        if m:
            return m.group(1).upper().rstrip("F")
    return None
