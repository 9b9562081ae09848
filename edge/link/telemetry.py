"""Health telemetry: a small retained message on `…/health` every `health.interval_s`,
and once after each (re)connect so the township never reads a stale one for long.

Readings come from the kernel's files (no subprocess per reading); where one is absent
(not a Pi: no thermal zone, no firmware throttle flags) it is null. Latest-value only:
while the link is down nothing is queued, the next report after reconnect replaces it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge import __version__
from edge.clock import clock_synced, now_iso
from edge.config import Config
from edge.contract.events import HealthReport, ModemReport, encode
from edge.link.uplink import Uplink
from edge.store.outbox import Outbox

logger = logging.getLogger("edge.telemetry")

_THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
_THROTTLED = Path("/sys/devices/platform/soc/soc:firmware/get_throttled")
_CONNECT_CHECK_S = 2.0


def cpu_temp_c(path: Path = _THERMAL) -> float | None:
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def throttled(path: Path = _THROTTLED, vcgencmd: str | None = None) -> int | None:
    """The firmware's throttled bits, from sysfs or `vcgencmd get_throttled`."""
    try:
        return int(path.read_text().strip(), 16)
    except (OSError, ValueError):
        pass
    if vcgencmd is None:
        return None
    try:
        out = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True,
                             timeout=2, check=True).stdout
        return int(out.strip().split("=", 1)[1], 16)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def mem_avail_mb(path: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return -1


class Telemetry:
    def __init__(self, config: Config, outbox: Outbox, uplink: Uplink, *,
                 modem: Callable[[], ModemReport] | None = None,
                 held_back: Callable[[], int] | None = None) -> None:
        self._config = config
        self._outbox = outbox
        self._uplink = uplink
        self._modem = modem
        self._held_back = held_back
        self._started = time.monotonic()
        self._vcgencmd = shutil.which("vcgencmd")
        self._stop = threading.Event()
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="health-telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def report(self) -> HealthReport:
        cfg = self._config
        oldest = self._outbox.oldest_pending_age()
        disk = shutil.disk_usage(cfg.data_dir)
        return HealthReport(
            station=cfg.station.id, township=cfg.station.township, ts=now_iso(),
            version=__version__, clock_synced=clock_synced(),
            uptime_s=int(time.monotonic() - self._started), cpu_temp_c=cpu_temp_c(),
            load1=round(os.getloadavg()[0], 2), mem_avail_mb=mem_avail_mb(),
            disk_free_mb=disk.free // (1 << 20), disk_total_mb=disk.total // (1 << 20),
            outbox_pending=self._outbox.pending_count(),
            outbox_oldest_s=None if oldest is None else int(oldest),
            reconnects=max(0, self._uplink.connects - 1),
            throttled=throttled(vcgencmd=self._vcgencmd),
            modem=self._modem() if self._modem else None,
            sms_held_back=self._held_back() if self._held_back else 0)

    def publish(self) -> bool:
        body = encode(self.report())
        sent = self._uplink.publish_retained(self._uplink.topics.health, body)
        if sent:
            self.published += 1
        return sent

    def _run(self) -> None:
        interval = self._config.health.interval_s
        seen_connects = -1
        next_due = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            fresh_link = self._uplink.connected and self._uplink.connects != seen_connects
            if now >= next_due or fresh_link:
                try:
                    if self.publish():
                        seen_connects = self._uplink.connects
                except Exception:  # a failed reading must not end the telemetry
                    logger.exception("health.report_failed")
                next_due = now + interval
            self._stop.wait(min(_CONNECT_CHECK_S, max(0.0, next_due - time.monotonic())))
