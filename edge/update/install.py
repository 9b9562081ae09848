"""The installer: Debian's RAUC, over its D-Bus service (`rauc install`, `rauc status
mark-good|mark-bad`). RAUC writes the other root slot and calls our bootloader back-end
(edge/update/tryboot.py) to make it the slot the next tryboot boots. The data partition is
no RAUC slot: an install cannot touch it."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable

from edge.contract.events import text
from edge.update.verify import UpdateRefused

# A streamed install fetches its blocks at the link's cap: hours for a whole root.
INSTALL_TIMEOUT_S = 24 * 3600.0
_PROGRESS = re.compile(r"^\s*(\d+)% ")


def _missing() -> UpdateRefused:
    return UpdateRefused("install_failed", text(
        "本机没有 rauc，无法安装更新，请重新刷写系统",
        "rauc is not installed on this unit: re-flash it"))


def _failed(args: list[str], why: str) -> UpdateRefused:
    return UpdateRefused("install_failed", text(
        f"rauc {args[0]} 失败：{why}", f"rauc {args[0]} failed: {why}"))


def _rauc(args: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(["rauc", *args], capture_output=True, text=True,
                              timeout=timeout_s)
    except FileNotFoundError as exc:
        raise _missing() from exc
    except subprocess.TimeoutExpired as exc:
        raise UpdateRefused("install_failed", text(
            f"rauc {args[0]} 超时", f"rauc {args[0]} took over {timeout_s:.0f} s")) from exc
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise _failed(args, last[-1] if last else f"exit {done.returncode}")
    return done.stdout


class Rauc:
    def install(self, bundle: str, progress: Callable[[int], None] | None = None) -> None:
        """A file, or a URL RAUC streams. `progress` gets RAUC's percentage as it moves."""
        args = ["install", bundle]
        try:
            proc = subprocess.Popen(["rauc", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError as exc:
            raise _missing() from exc
        timer = threading.Timer(INSTALL_TIMEOUT_S, proc.kill)
        timer.start()
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.strip())
                found = _PROGRESS.match(line)
                if found and progress is not None:
                    progress(int(found[1]))
            code = proc.wait()
        finally:
            timer.cancel()
        if code != 0:
            errors = [x for x in lines if "LastError" in x or "rror" in x] or lines
            raise _failed(args, errors[-1] if errors else f"exit {code}")

    def mark_good(self) -> None:
        """The booted slot is healthy: the tried boot becomes the committed one."""
        _rauc(["status", "mark-good", "booted"], 60.0)

    def mark_bad(self, which: str) -> None:
        """`booted` (a failed trial, about to reboot) or `other` (back on the old slot)."""
        _rauc(["status", "mark-bad", which], 60.0)
