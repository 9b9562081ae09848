"""SMS in PDU mode (3GPP TS 23.040): what the station sends, and what modems report back.

Everything the station sends is UCS-2 (DCS 0x08) so Chinese arrives intact. UCS-2 here
means UTF-16 big-endian, as every phone decodes it: an emoji is a surrogate pair, two
code units. A message longer than 70 units goes as concatenated parts of at most 67
units, each with an 8-bit reference User Data Header; a cut never falls between the two
halves of a surrogate pair (the bug behind python-gsmmodem #60: a phone shows both halves
as garbage).

Incoming SMS-DELIVER PDUs (an officer asking for the status) are decoded by
`smspdudecoder`; status reports are parsed here (a few fixed fields).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from smspdudecoder.fields import SMSDeliver

SINGLE_UNITS = 70  # 140 octets of UCS-2
PART_UNITS = 67  # 140 octets less the 6-octet concatenation header
MAX_PARTS = 255

# First octet of an SMS-SUBMIT: TP-MTI=01, TP-VPF=10 (relative), TP-SRR (report wanted).
_SUBMIT = 0x01 | 0x10 | 0x20
_UDHI = 0x40
VALIDITY_24H = 0xA7  # relative TP-VP: 12 h + (167-143) * 30 min
DCS_UCS2 = 0x08


class PduError(ValueError):
    """A PDU (or a phone number) that cannot be encoded or decoded."""


@dataclass(frozen=True, slots=True)
class Part:
    """One SMS-SUBMIT ready for AT+CMGS: `hex` starts with the empty SMSC field (00),
    `length` is the TPDU octet count AT+CMGS wants (the SMSC field excluded)."""

    hex: str
    length: int


def split_utf16(text: str) -> list[bytes]:
    """The text as UTF-16-BE chunks, one per SMS part, never splitting a surrogate pair."""
    data = text.encode("utf-16-be")
    units = len(data) // 2
    if units <= SINGLE_UNITS:
        return [data]
    chunks: list[bytes] = []
    start = 0
    while start < units:
        end = min(start + PART_UNITS, units)
        if end < units and 0xD8 <= data[2 * end - 2] <= 0xDB:
            end -= 1  # the last unit is a high surrogate: its pair starts the next part
        chunks.append(data[2 * start: 2 * end])
        start = end
    if len(chunks) > MAX_PARTS:
        raise PduError(f"text needs {len(chunks)} SMS parts; at most {MAX_PARTS}")
    return chunks


def encode_number(number: str) -> bytes:
    """TP-DA: digit count, type of address (0x91 international / 0x81 national), BCD."""
    international = number.startswith("+")
    digits = number[1:] if international else number
    if not digits.isdigit() or not 1 <= len(digits) <= 20:
        raise PduError(f"not a phone number: {number!r}")
    padded = digits + ("F" if len(digits) % 2 else "")
    swapped = "".join(padded[i + 1] + padded[i] for i in range(0, len(padded), 2))
    return bytes([len(digits), 0x91 if international else 0x81]) + bytes.fromhex(swapped)


def encode_submit(number: str, text: str, reference: int,
                  validity: int = VALIDITY_24H) -> list[Part]:
    """SMS-SUBMIT PDUs for `text` to `number`, a delivery report requested for each.
    `reference` (0-255) ties the parts of one message together on the phone."""
    chunks = split_utf16(text)
    address = encode_number(number)
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        if len(chunks) == 1:
            first, user_data = _SUBMIT, chunk
        else:
            header = bytes([0x05, 0x00, 0x03, reference & 0xFF, len(chunks), i])
            first, user_data = _SUBMIT | _UDHI, header + chunk
        tpdu = (bytes([first, 0x00]) + address + bytes([0x00, DCS_UCS2, validity, len(user_data)])
                + user_data)
        parts.append(Part(hex="00" + tpdu.hex().upper(), length=len(tpdu)))
    return parts


def part_count(text: str) -> int:
    return len(split_utf16(text))


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An SMS-STATUS-REPORT: did message `reference` reach `number`?"""

    reference: int
    number: str
    status: int

    @property
    def outcome(self) -> str:
        """TS 23.040 §9.2.3.15: 0x00-0x1F done, 0x20-0x3F still trying, else failed."""
        if self.status <= 0x1F:
            return "delivered"
        if self.status <= 0x3F:
            return "pending"
        return "failed"


def _semi_octets(data: bytes) -> str:
    return "".join(f"{b & 0x0F:X}{b >> 4:X}" for b in data).rstrip("F")


def parse_status_report(pdu_hex: str) -> StatusReport:
    try:
        data = bytes.fromhex(pdu_hex.strip())
        pos = 1 + data[0]  # skip the SMSC field
        first = data[pos]
        if first & 0x03 != 0x02:
            raise PduError(f"not a status report (TP-MTI {first & 0x03})")
        reference = data[pos + 1]
        digits = data[pos + 2]
        toa = data[pos + 3]
        octets = (digits + 1) // 2
        number = _semi_octets(data[pos + 4: pos + 4 + octets])[:digits]
        pos += 4 + octets + 14  # the service centre's and the discharge time stamps
        status = data[pos]
    except (IndexError, ValueError) as exc:
        raise PduError(f"malformed status report {pdu_hex!r}: {exc}") from exc
    return StatusReport(reference, ("+" if toa & 0x70 == 0x10 else "") + number, status)


@dataclass(frozen=True, slots=True)
class Incoming:
    sender: str
    text: str
    # (reference, count, number) of a concatenated part, else None.
    part: tuple[int, int, int] | None


def parse_deliver(pdu_hex: str) -> Incoming:
    try:
        sms: dict[str, Any] = SMSDeliver.decode(io.StringIO(pdu_hex.strip()))
    except Exception as exc:  # the library raises whatever its bit reader hit
        raise PduError(f"malformed SMS-DELIVER {pdu_hex[:40]!r}: {exc}") from exc
    sender = str(sms["sender"]["number"])
    if sms["sender"]["toa"]["ton"] == "international":
        sender = "+" + sender
    part = None
    for element in (sms["user_data"].get("header") or {}).get("elements", []):
        if element["iei"] in (0x00, 0x08):
            d = element["data"]
            part = (int(d["reference"]), int(d["parts_count"]), int(d["part_number"]))
    return Incoming(sender, str(sms["user_data"]["data"] or ""), part)
