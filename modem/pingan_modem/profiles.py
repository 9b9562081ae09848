"""What each modem vendor does differently, as data: no vendor appears in code elsewhere.

A profile names the commands a model needs (ICCID, serving cell, soft reset), where it
keeps what it announces, its boot notices and the status lines it sends on its own. The
modem part picks one from `ATI` / `AT+CGMM` (`detect`), or `modem.profile` forces one.

Whatever was detected, the AT reader keeps *every* profile's status lines and boot
notices out of replies (`UNSOLICITED`, `BOOT_NOTICES`): a modem is sometimes not what it
says, and firmware changes habits across updates. Beyond the lists, any `^…` line and any
`+XXX:` line not asked for counts as unsolicited (pingan_modem/at.py).

Sources (public AT manuals and a widely used open-source driver, ModemManager):

- Quectel EC25 / EC21 / EG9x ("EC25&EC21 AT Commands Manual" V1.3): `AT+QCCID`
  (`+QCCID:`), `AT+QENG="servingcell"`, boot `RDY`, `+QUSIM:`, `+QIND: SMS DONE`;
  soft reset `AT+CFUN=1,1`. Delivery reports announced `+CDSI: "SM"` but kept in "SR"
  (seen on EC25 firmware R06; pingan_sim.modem `cdsi_quirk`).
- Quectel EG25-G (same manual family, "EC2x&EG2x&EG9x"): as the EC25, plus the URCs
  ModemManager's quectel plugin ignores (`+QGPSURC:`, `+QLWURC:`) and treats as a reset
  (`RDY`); its boot also says `+CFUN: 1` and `+QIND: PB DONE`. Its reports are read
  where announced.
- SIMCom SIM7600 ("SIM7500_SIM7600 Series AT Command Manual"): `AT+CICCID` answered
  `+ICCID:`, `AT+CPSI?`, boot `RDY`, `SMS DONE`, `PB DONE`.
- Huawei ME909s ("HUAWEI ME909s Series LTE Module AT Command Interface
  Specification"): `AT^ICCID?` (`^ICCID:`, nibble-swapped on some firmware; ModemManager's
  mm-sim-huawei.c falls back to the generic read when it fails), `AT^HCSQ?` (`^HCSQ:
  "LTE",<rssi>,<rsrp>,<sinr>,<rsrq>` in steps, mapped as ModemManager's huawei plugin
  does), status lines `^RSSI:`, `^HCSQ:`, `^NWTIME:`, `^MODE:`, `^SRVST:`, `^SIMST:`,
  `^DSFLOWRPT:`, `^EONS:`, `^XLEMA:` at any moment; `COMMAND NOT SUPPORT` as a final
  result; soft reset `AT^RESET` (ModemManager's huawei plugin); `^SYSSTART` after a reset
  (the habit issue 20 was found with; Cinterion modules say the same).
- Fibocom L610 / NL668 / FM150 (ModemManager's fibocom plugin): `+SIM READY` (no colon)
  when the SIM is ready, soft reset `AT+CFUN=15`, ICCID by `AT+CCID`.
- Any modem (3GPP TS 27.007 §8.18 `+CRSM`): the ICCID read from the SIM's EF_ICCID
  (file 12258 = 0x2FE2), `AT+CRSM=176,12258,0,0,10`, nibble-swapped; tried last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

CellParser = Literal["qeng", "cpsi", "hcsq"]


@dataclass(frozen=True, slots=True)
class Query:
    """A command and the prefix of the line that answers it."""

    command: str
    reply: str


# The ICCID by restricted SIM access (27.007 §8.18): every modem, tried last.
ICCID_CRSM = Query("AT+CRSM=176,12258,0,0,10", "+CRSM:")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    # Matched against what ATI and AT+CGMM said (upper case).
    match: str
    # Tried in order until one gives an ICCID.
    iccid: tuple[Query, ...]
    # The LTE serving cell's RSRP / RSRQ / SINR, and how to read the answer.
    cell: Query | None = None
    cell_parser: CellParser | None = None
    # Where delivery reports announced by +CDSI really are (None: where announced).
    report_store: str | None = None
    reset: str = "AT+CFUN=1,1"
    # Lines that mean the modem (re)started.
    boot: tuple[str, ...] = ("RDY",)
    # Prefixes of status lines the vendor sends on its own, at any moment.
    unsolicited: tuple[str, ...] = ()


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("EG25-G", r"\bEG25", (Query("AT+QCCID", "+QCCID:"), ICCID_CRSM),
            Query('AT+QENG="servingcell"', "+QENG:"), "qeng",
            unsolicited=("+QIND:", "+QUSIM:", "+QGPSURC:", "+QLWURC:", "+QIURC:")),
    Profile("EC25", r"\bE[CG]2\d|\bEG9\d|QUECTEL", (Query("AT+QCCID", "+QCCID:"), ICCID_CRSM),
            Query('AT+QENG="servingcell"', "+QENG:"), "qeng", report_store="SR",
            unsolicited=("+QIND:", "+QUSIM:", "+QGPSURC:", "+QLWURC:", "+QIURC:")),
    Profile("SIM7600", r"SIM7[56]\d\d|SIMCOM", (Query("AT+CICCID", "+ICCID:"), ICCID_CRSM),
            Query("AT+CPSI?", "+CPSI:"), "cpsi",
            unsolicited=("SMS DONE", "PB DONE")),
    Profile("ME909s", r"HUAWEI|\bME9\d\d|\bMU70\d",
            (Query("AT^ICCID?", "^ICCID:"), Query("AT+CCID", "+CCID:"), ICCID_CRSM),
            Query("AT^HCSQ?", "^HCSQ:"), "hcsq", reset="AT^RESET", boot=("^SYSSTART",),
            unsolicited=("^RSSI:", "^HCSQ:", "^NWTIME:", "^MODE:", "^SRVST:", "^SIMST:",
                         "^DSFLOWRPT:", "^EONS:", "^XLEMA:", "^BOOT:", "^SYSSTART",
                         "^RSSILVL:", "^CSNR:", "^STIN:", "^NDISSTAT:")),
    Profile("Fibocom", r"FIBOCOM|\bL6[1-9]0\b|\bNL6\d\d|\bFM1[0-9]0|\bFG\d{3}\b",
            (Query("AT+CCID", "+CCID:"), ICCID_CRSM), reset="AT+CFUN=15",
            boot=("+SIM READY",), unsolicited=("+SIM READY", "+SIM DROP")),
    Profile("generic", r"(?!)", (Query("AT+CCID", "+CCID:"), ICCID_CRSM)),
)}

# Lines that mean some modem has just (re)started, whichever profile is in use.
BOOT_NOTICES: frozenset[str] = frozenset(n for p in PROFILES.values() for n in p.boot)
# Besides a boot notice, signs that a modem is ready after a reset: the SIM is.
READY_NOTICES: frozenset[str] = BOOT_NOTICES | {"+CPIN: READY", "+SIM READY"}
# Every vendor's status-line prefixes: kept out of replies whatever was detected.
UNSOLICITED: tuple[str, ...] = tuple(sorted(
    {u for p in PROFILES.values() for u in p.unsolicited} | BOOT_NOTICES))


def detect(identity: list[str]) -> Profile:
    """The profile for what `ATI` / `AT+CGMM` said; `generic` for anything else."""
    text = " ".join(identity).upper()
    for profile in PROFILES.values():
        if re.search(profile.match, text):
            return profile
    return PROFILES["generic"]
