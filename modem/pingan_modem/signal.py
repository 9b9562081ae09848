"""Reading the modem's answers about itself and the network: pure parsing, no I/O.

Nothing a modem says is trusted: every value is validated and bounded here, so the health
report stays small whatever arrives (a babbling modem, another vendor's status lines, a
10 KB line of junk). A value that does not fit its documented form is None.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from typing import Literal

Registration = Literal["home", "roaming", "searching", "denied", "unknown", "none"]
# +CREG / +CEREG <stat>
REGISTRATION: dict[int, Registration] = {
    0: "none", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming",
    6: "home", 7: "roaming"}

MODEL_MAX = 64
# 27.007 §7.3 +COPS: long alphanumeric up to 16 characters, short up to 8, numeric
# MCC+MNC (5 or 6 digits). Some networks send longer long names: up to 24 are kept.
_OPERATOR_FORMS = {"0": re.compile(r"[ -~]{1,24}"), "1": re.compile(r"[ -~]{1,16}"),
                   "2": re.compile(r"\d{5,6}")}
_PRINTABLE = re.compile(r"[ -~]+")
_FIELDS_MAX = 64  # a line with more comma-separated values is not one we asked for


def fields(line: str) -> list[str]:
    """The comma-separated values after `+XXX: `, quotes removed; [] if unreadable."""
    _, _, rest = line.partition(":")
    if not rest.strip() or len(rest) > 1024:
        return []
    try:
        values = next(csv.reader([rest.strip()]), [])
    except csv.Error:
        return []
    return [f.strip() for f in values[:_FIELDS_MAX]]


def first(lines: Iterable[str], prefix: str) -> str:
    """The first line with `prefix` (the answer, not whatever else came with it)."""
    return next((ln for ln in lines if ln.startswith(prefix)), "")


def integer(value: str, low: int, high: int) -> int | None:
    """`value` as an int within [low, high], else None."""
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    n = int(value)
    return n if low <= n <= high else None


def csq_dbm(line: str) -> int | None:
    """+CSQ: <rssi>,<ber> → dBm (27.007: 0 → -113, 31 → -51, 99 unknown)."""
    values = fields(line) if line.startswith("+CSQ:") else []
    rssi = integer(values[0], 0, 31) if values else None
    return None if rssi is None else -113 + 2 * rssi


def registration(line: str, query: bool) -> Registration | None:
    """+CREG: <n>,<stat>[,...] (the answer to `AT+CREG?`, `query`) or the URC
    +CREG: <stat>[,...]."""
    values = fields(line)
    index = 1 if query else 0
    stat = integer(values[index], 0, 99) if len(values) > index else None
    return None if stat is None else REGISTRATION.get(stat, "unknown")


def best_registration(*states: Registration | None) -> Registration | None:
    """The better of CS (+CREG) and EPS (+CEREG): an LTE-only SIM is fine on +CEREG alone."""
    order: list[Registration] = ["home", "roaming", "searching", "denied", "unknown", "none"]
    known = [order.index(s) for s in states if s is not None]
    return order[min(known)] if known else None


def operator(line: str) -> str | None:
    """+COPS: <mode>,<format>,<oper>[,<AcT>]: the operator in its documented form."""
    values = fields(line) if line.startswith("+COPS:") else []
    if len(values) < 3:
        return None
    form = _OPERATOR_FORMS.get(values[1])
    name = values[2].strip()
    return name if form is not None and form.fullmatch(name) else None


_ACT = {"0": "GSM", "2": "UMTS", "3": "EDGE", "4": "HSDPA", "5": "HSUPA", "6": "HSPA",
        "7": "LTE", "8": "EC-GSM", "9": "NB-IoT", "10": "E-UTRA-5GCN", "11": "NR-5GCN",
        "12": "NG-RAN", "13": "E-UTRA-NR"}


def access_tech(line: str) -> str | None:
    values = fields(line) if line.startswith("+COPS:") else []
    return _ACT.get(values[3]) if len(values) >= 4 else None


def model(lines: Iterable[str]) -> str | None:
    """The model from `AT+CGMM` (a bare line) or `ATI` (`Model: X`): at most 64
    printable characters, never a status line."""
    for raw in lines:
        line = raw.strip()
        if line.upper().startswith("MODEL:"):
            line = line[6:].strip()
        elif line[:1] in ("+", "^") or ":" in line:
            continue
        if 0 < len(line) <= MODEL_MAX and _PRINTABLE.fullmatch(line):
            return line
    return None


def _num(value: str, low: float, high: float) -> float | None:
    try:
        n = float(value)
    except ValueError:
        return None
    return n if low <= n <= high else None


Cell = tuple[float | None, float | None, float | None]
_NONE: Cell = (None, None, None)


def qeng_lte(line: str) -> Cell:
    """Quectel +QENG: "servingcell",<state>,"LTE",<duplex>,<mcc>,<mnc>,<cellid>,<pcid>,
    <earfcn>,<band>,<ul_bw>,<dl_bw>,<tac>,<rsrp>,<rsrq>,<rssi>,<sinr>,... → RSRP, RSRQ,
    SINR (SINR in dB already on EC2x firmware ≥ R06)."""
    values = fields(line)
    if len(values) < 17 or values[2] != "LTE":
        return _NONE
    return (_num(values[13], -160, -20), _num(values[14], -40, 10),
            _num(values[16], -30, 60))


def cpsi_lte(line: str) -> Cell:
    """SIMCom +CPSI: LTE,<op mode>,<mcc-mnc>,<tac>,<cell>,<pci>,<band>,<earfcn>,<dlbw>,<ulbw>,
    <rsrq>,<rsrp>,<rssi>,<rssnr> → RSRP, RSRQ, SINR."""
    values = fields(line)
    if len(values) < 14 or values[0] != "LTE":
        return _NONE
    return (_num(values[11], -160, -20), _num(values[10], -40, 10),
            _num(values[13], -30, 60))


def hcsq_lte(line: str) -> Cell:
    """Huawei ^HCSQ: "LTE",<rssi>,<rsrp>,<sinr>,<rsrq> in steps → RSRP = -141 + v dBm
    (0-97), SINR = -20.2 + v/5 dB (0-251), RSRQ = -20 + v/2 dB (0-34), as the ME909s
    manual's tables and ModemManager's huawei plugin map them."""
    values = fields(line)
    if len(values) < 5 or values[0] != "LTE":
        return _NONE
    rsrp, sinr, rsrq = (integer(values[2], 0, 97), integer(values[3], 0, 251),
                        integer(values[4], 0, 34))
    return (None if rsrp is None else -141.0 + rsrp,
            None if rsrq is None else -20.0 + rsrq / 2,
            None if sinr is None else round(-20.2 + sinr / 5, 1))


CELL_PARSERS: dict[str, Callable[[str], Cell]] = {
    "qeng": qeng_lte, "cpsi": cpsi_lte, "hcsq": hcsq_lte}

_ICCID = re.compile(r"(?<![0-9A-Fa-f])([0-9A-Fa-f]{18,22})(?![0-9A-Fa-f])")


def iccid(lines: Iterable[str]) -> str | None:
    """The SIM's ICCID from any vendor's answer: digits (18-22), read as stored on the
    SIM (nibble-swapped, `98…`) or as printed on it (`89…`, ITU-T E.118)."""
    for line in lines:
        m = _ICCID.search(line)
        if not m:
            continue
        raw = m.group(1).upper()
        if raw.startswith("98") and len(raw) % 2 == 0:  # as stored: swap each pair
            raw = "".join(raw[i + 1] + raw[i] for i in range(0, len(raw), 2))
        raw = raw.rstrip("F")
        if raw.isdigit() and 18 <= len(raw) <= 22:
            return raw
    return None


def printable(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, anything unprintable replaced: for messages."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("…" if len(text) > limit else "")
