"""After the reboot into a new slot: commit only when healthy, else go back and say why.

`pingan-edge update commit` runs on every boot once the station has started (a systemd
oneshot). On a slot that is being tried, within `update.health_s` the station must:

- be connected to the township broker with its own certificate (TLS client cert);
- have delivered an event from the outbox (its `update.trial_boot` status);
- pass the selftest rows that need no person (`update.commit_rows`).

Then `rauc status mark-good` makes the boot permanent (the back-end rewrites pingan-slots.txt's
[all]) and the station reports `update.committed`. Otherwise the verdict and its reasons
go into the trial record on the data partition, the slot is marked bad and the unit
reboots without the tryboot flag: the committed slot comes back and reports
`update.rolled_back` with those reasons. A crash, a hang (the watchdog's reset) or a power
cut before the verdict ends the same way, with `crashed` as the reason.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.contract.events import Text, text
from edge.update.updater import Installer, Trial, read_trial, write_trial
from edge.update.verify import UpdateRefused

POLL_S = 2.0

# A row of the selftest: (check, passed, detail).
RowResult = tuple[str, bool, str]

_WHY = {
    "station_running": ("站点程序未运行（启动失败或数据无法读取）",
                        "the station is not running (it failed to start, or cannot read "
                        "its data)"),
    "connected_own_cert": ("未能用本站证书连接乡镇平台",
                           "not connected to the township broker with the station's own "
                           "certificate"),
    "event_delivered": ("事件未能送达乡镇平台", "no event reached the township"),
}


@dataclass(frozen=True)
class Verdict:
    good: bool
    checks: dict[str, bool]
    code: str | None = None
    reason: Text | None = None


def decide(ask: Callable[[], dict[str, Any] | None], rows: Callable[[], list[RowResult]],
           health_s: float, *, poll_s: float = POLL_S,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Poll the station until every check passes (good) or `health_s` is over (bad)."""
    deadline = clock() + health_s
    details: dict[str, str] = {}
    while True:
        status = ask()
        checks = {
            "station_running": status is not None,
            "connected_own_cert": bool(status and status.get("connected")
                                       and status.get("client_cert")),
            "event_delivered": bool(status and status.get("trial_event_delivered")),
        }
        for name, ok, detail in rows():
            checks[f"selftest.{name}"] = ok
            details[f"selftest.{name}"] = detail
        if all(checks.values()):
            return Verdict(True, checks)
        if clock() >= deadline:
            failed = [name for name, ok in checks.items() if not ok]
            zh = "；".join(_WHY[n][0] if n in _WHY else f"自检 {n[9:]} 未通过" for n in failed)
            en = "; ".join(_WHY[n][1] if n in _WHY else
                           f"selftest {n[9:]} failed ({details.get(n, '')})" for n in failed)
            code = "station_down" if not checks["station_running"] else "unhealthy"
            return Verdict(False, checks, code, text(
                f"新版本在 {health_s:.0f} 秒内未通过检查：{zh}",
                f"the new release failed its checks within {health_s:.0f} s: {en}"))
        sleep(poll_s)


def run(directory: Path, *, running: str, installer: Installer,
        ask: Callable[[], dict[str, Any] | None],
        settle: Callable[[dict[str, bool]], bool],
        rows: Callable[[], list[RowResult]], health_s: float,
        fallback_command: list[str], poll_s: float = POLL_S) -> tuple[str, Verdict | None]:
    """Decide the trial of the slot that runs, if there is one. Returns what was done:
    `none` (no trial here), `committed` or `rolled_back` (the unit then reboots)."""
    trial = read_trial(directory)
    if trial is None or trial.version != running or trial.verdict is not None:
        return "none", None
    verdict = decide(ask, rows, health_s, poll_s=poll_s)
    if verdict.good:
        try:
            installer.mark_good()
        except UpdateRefused as exc:  # RAUC could not commit: treat as unhealthy
            verdict = Verdict(False, verdict.checks, "commit_failed", exc.message)
    if verdict.good:
        # The verdict first, then the station is told: whichever of them reports it (the
        # station now, or at its next start if it cannot be told), it is the same event.
        write_trial(directory, Trial(**{**_fields(trial), "verdict": "committed",
                                        "checks": verdict.checks}))
        settle(verdict.checks)
        return "committed", verdict
    write_trial(directory, Trial(**{**_fields(trial), "verdict": "rolled_back",
                                    "code": verdict.code, "reason": verdict.reason,
                                    "checks": verdict.checks}))
    with contextlib.suppress(UpdateRefused):  # without the flag: the committed slot anyway
        installer.mark_bad("booted")
    subprocess.run(fallback_command, check=False)
    return "rolled_back", verdict


def _fields(trial: Trial) -> dict[str, Any]:
    return {f: getattr(trial, f) for f in trial.__struct_fields__}
