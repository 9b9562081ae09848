"""The installer: Debian's RAUC, over its D-Bus service (`rauc install`, `rauc status
mark-good|mark-bad`). RAUC writes the other root slot and calls our bootloader back-end
(edge/update/tryboot.py) to make it the slot the next tryboot boots. The data partition is
no RAUC slot: an install cannot touch it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from edge.contract.events import text
from edge.update.verify import UpdateRefused

INSTALL_TIMEOUT_S = 3600.0


def _rauc(args: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(["rauc", *args], capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError as exc:
        raise UpdateRefused("install_failed", text(
            "本机没有 rauc，无法安装更新，请重新刷写系统",
            "rauc is not installed on this unit: re-flash it")) from exc
    except subprocess.TimeoutExpired as exc:
        raise UpdateRefused("install_failed", text(
            f"rauc {args[0]} 超时", f"rauc {args[0]} took over {timeout_s:.0f} s")) from exc
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        why = last[-1] if last else f"exit {done.returncode}"
        raise UpdateRefused("install_failed", text(
            f"rauc {args[0]} 失败：{why}", f"rauc {args[0]} failed: {why}"))
    return done.stdout


class Rauc:
    def install(self, bundle: Path) -> None:
        _rauc(["install", str(bundle)], INSTALL_TIMEOUT_S)

    def mark_good(self) -> None:
        """The booted slot is healthy: the tried boot becomes the committed one."""
        _rauc(["status", "mark-good", "booted"], 60.0)

    def mark_bad(self, which: str) -> None:
        """`booted` (a failed trial, about to reboot) or `other` (back on the old slot)."""
        _rauc(["status", "mark-bad", which], 60.0)
