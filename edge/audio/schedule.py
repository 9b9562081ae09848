"""Recurring broadcasts: cron expressions on the station's wall clock, and quiet hours.

Due minutes are found with an injected clock (`now()`), so tests drive time. A schedule
fires at most once per matching minute, remembered in the store across restarts; minutes
missed while the unit was off are not caught up (a 07:00 notice at 09:00 is wrong).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, time, timedelta, tzinfo

from edge.audio.store import AudioStore
from edge.contract.commands import ScheduleSet
from edge.contract.cron import Cron, CronError
from edge.logs import log

logger = logging.getLogger("edge.audio.schedule")

__all__ = ["Cron", "CronError", "Scheduler", "in_quiet_hours"]


def in_quiet_hours(now: datetime, start: str, end: str) -> bool:
    """`start`/`end` are "HH:MM" local; a window may cross midnight; empty = none."""
    if not start:
        return False
    a, b = time.fromisoformat(start), time.fromisoformat(end)
    t = now.time().replace(tzinfo=None)
    return a <= t < b if a <= b else (t >= a or t < b)


class Scheduler:
    def __init__(self, store: AudioStore, tz: tzinfo,
                 fire: Callable[[ScheduleSet, datetime], None],
                 now: Callable[[], datetime]) -> None:
        self._store = store
        self._tz = tz
        self._fire = fire
        self._now = now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audio-schedule", daemon=True)

    def local_now(self) -> datetime:
        return self._now().astimezone(self._tz)

    def run_due(self) -> list[str]:
        """Fire every schedule due in the current minute that has not fired in it yet."""
        minute = self.local_now().replace(second=0, microsecond=0)
        fired = []
        for spec, last in self._store.schedules():
            try:
                due = Cron(spec.cron).matches(minute)
            except CronError:
                continue  # refused when set; an old row must not stop the others
            if due and (last is None or last < minute):
                self._store.mark_fired(spec.schedule_id, minute)
                fired.append(spec.schedule_id)
                try:
                    self._fire(spec, minute)
                except Exception:
                    logger.exception("schedule.fire_failed",
                                     extra={"fields": {"schedule_id": spec.schedule_id}})
        return fired

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # a broken database must not end the scheduler for good
                logger.exception("schedule.failed")
            now = self.local_now()
            next_minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            # Re-check at least every 5 s: the wall clock jumps when NTP first syncs.
            self._stop.wait(min(5.0, max(0.05, (next_minute - now).total_seconds())))
        log(logger, "debug", "schedule.stopped")
