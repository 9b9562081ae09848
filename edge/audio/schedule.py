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
from edge.logs import log

logger = logging.getLogger("edge.audio.schedule")

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))


class CronError(ValueError):
    pass


def _field(spec: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in spec.split(","):
        body, _, step_s = item.partition("/")
        try:
            step = int(step_s) if step_s else 1
            if body == "*":
                start, end = low, high
            elif "-" in body:
                a, b = body.split("-", 1)
                start, end = int(a), int(b)
            else:
                start = end = int(body)
        except ValueError as exc:
            raise CronError(f"{name}: {item!r} is not a number, range, list or step") from exc
        if step < 1 or not low <= start <= end <= high:
            raise CronError(f"{name}: {item!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


class Cron:
    """`minute hour day-of-month month day-of-week`, as crontab(5): `*`, lists, ranges,
    steps; day of week 0 or 7 is Sunday; when both day fields are restricted, either
    matching is enough."""

    def __init__(self, expr: str) -> None:
        parts = expr.split()
        if len(parts) != 5:
            raise CronError(f"cron {expr!r}: need 5 fields (minute hour day month weekday)")
        fields = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        self.minutes, self.hours, self.days, self.months, weekdays = fields
        self.weekdays = frozenset(d % 7 for d in weekdays)
        self._any_day, self._any_weekday = parts[2] == "*", parts[4] == "*"

    def matches(self, t: datetime) -> bool:
        if t.minute not in self.minutes or t.hour not in self.hours \
                or t.month not in self.months:
            return False
        day_ok = t.day in self.days
        weekday_ok = (t.isoweekday() % 7) in self.weekdays
        if self._any_day or self._any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


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
