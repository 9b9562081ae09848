"""What every sender of alarm texts agrees on, the unit's fallback and the township's
escalation alike: the six-character code, which refusals are final, the back-off, and
when two phone numbers are the same phone."""

from __future__ import annotations

import hashlib
import re

ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read over the phone
RETRY_BASE_S = 1.0  # a part refused for a temporary reason: tried again after 1, 2, 4 ...
RETRY_MAX_S = 300.0  # ... up to 5 min apart


def short_code(alarm_id: str) -> str:
    """Six characters an officer can read out, from the alarm's first event id: the
    unit's texts and the township's carry the same one, so a repeat is seen as one."""
    digest = hashlib.sha256(alarm_id.encode()).digest()
    return "".join(ALPHABET[b % len(ALPHABET)] for b in digest[:6])


# RP causes (TS 24.011 Table 8.4), TP-FCS (TS 23.040 §9.2.3.22) and ME errors (TS 27.005
# §3.2.5) that no retry can mend: the number is unassigned, barred or unknown, or the
# PDU itself is refused. Everything else (+CMS ERROR: 500 unknown, 38 network out of
# order, 41/42 temporary failure / congestion, 331/332 no network / timeout, ERROR, a
# hung modem) is tried again.
_PERMANENT_CMS = frozenset(
    {1, 8, 10, 21, 28, 29, 30, 50, 69, 95, 96, 97, 99}
    | set(range(0x80, 0xB1)) | {0xC1, 0xC3, 0xC4, 0xC6, 0xC7}
    | {303, 304, 305})
_CMS = re.compile(r"^\+CMS ERROR:\s*(\d{1,4})\s*$")


def permanent(error: str) -> bool:
    """Whether a modem's refusal of an SMS part is final for that number."""
    m = _CMS.match(error)
    return m is not None and int(m.group(1)) in _PERMANENT_CMS


def retry_after(attempts: int, most: float = RETRY_MAX_S) -> float:
    """Seconds before attempt `attempts + 1` of a part refused for a temporary reason."""
    return float(min(most, RETRY_BASE_S * 2 ** max(0, min(attempts - 1, 16))))


def normalise(number: str) -> str:
    """Compare numbers by their last 11 digits: +86 13800138000 == 13800138000."""
    return "".join(c for c in number if c.isdigit())[-11:]
