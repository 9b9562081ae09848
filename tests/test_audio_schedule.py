"""Recurring broadcasts on an injected clock: cron matching, firing once per minute,
surviving a restart of the store, and quiet hours."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path

import pytest

from edge.audio.schedule import Cron, CronError, Scheduler, in_quiet_hours
from edge.audio.store import AudioStore
from edge.contract.commands import ScheduleSet

TZ = zoneinfo.ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int, minute: int, second: int = 0) -> dt.datetime:
    # 2026-11-23 is a Monday.
    return dt.datetime(2026, 11, day, hour, minute, second, tzinfo=TZ)


@pytest.mark.parametrize(("expr", "when", "expected"), [
    ("0 7 * * *", at(23, 7, 0), True),
    ("0 7 * * *", at(23, 7, 1), False),
    ("*/15 8-9 * * *", at(23, 9, 45), True),
    ("*/15 8-9 * * *", at(23, 10, 0), False),
    ("30 18 * * 1-5", at(23, 18, 30), True),   # Monday
    ("30 18 * * 1-5", at(29, 18, 30), False),  # Sunday
    ("30 18 * * 0", at(29, 18, 30), True),
    ("30 18 * * 7", at(29, 18, 30), True),     # 7 is Sunday too
    ("0 12 1 * 1", at(23, 12, 0), True),       # both day fields: either matches
    ("0 12 1,15 11 *", at(15, 12, 0), True),
])
def test_cron_matches(expr, when, expected):
    assert Cron(expr).matches(when) is expected


@pytest.mark.parametrize("expr", ["0 7 * *", "60 7 * * *", "0 24 * * *", "a 7 * * *",
                                  "0 7 0 * *", "*/0 * * * *", "5-1 * * * *"])
def test_bad_cron_says_why(expr):
    with pytest.raises(CronError):
        Cron(expr)


def test_quiet_hours_cross_midnight():
    assert in_quiet_hours(at(23, 23, 0), "22:00", "06:30")
    assert in_quiet_hours(at(23, 6, 29), "22:00", "06:30")
    assert not in_quiet_hours(at(23, 6, 30), "22:00", "06:30")
    assert in_quiet_hours(at(23, 13, 0), "12:00", "14:00")
    assert not in_quiet_hours(at(23, 14, 0), "12:00", "14:00")
    assert not in_quiet_hours(at(23, 3, 0), "", "")


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def spec(schedule_id: str, cron: str) -> ScheduleSet:
    return ScheduleSet(id=f"set-{schedule_id}", schedule_id=schedule_id, cron=cron,
                       tone="chime")


def test_fires_once_per_due_minute_and_across_a_restart(tmp_path: Path):
    clock = Clock(at(23, 6, 59, 50))
    fired: list[tuple[str, dt.datetime]] = []
    store = AudioStore(tmp_path / "audio.db")
    store.put_schedule(spec("morning", "0 7 * * *"))
    store.put_schedule(spec("quarterly", "*/15 * * * *"))
    sched = Scheduler(store, TZ, lambda s, m: fired.append((s.schedule_id, m)), clock)
    assert sched.run_due() == []
    clock.now = at(23, 7, 0, 1)
    assert sorted(sched.run_due()) == ["morning", "quarterly"]
    clock.now = at(23, 7, 0, 40)
    assert sched.run_due() == [], "once per minute"
    store.close()

    # The unit restarts within the same minute: nothing fires twice.
    store = AudioStore(tmp_path / "audio.db")
    sched = Scheduler(store, TZ, lambda s, m: fired.append((s.schedule_id, m)), clock)
    assert sched.run_due() == []
    # Re-sending a schedule (QoS 1 redelivery, an edit) does not make it fire again.
    store.put_schedule(spec("morning", "0 7 * * *"))
    assert sched.run_due() == []
    clock.now = at(23, 7, 15, 3)
    assert sched.run_due() == ["quarterly"]
    clock.now = at(24, 7, 0, 0)  # next day: minutes missed while off are not caught up
    assert sorted(sched.run_due()) == ["morning", "quarterly"]
    assert [m for s, m in fired if s == "morning"] == [at(23, 7, 0), at(24, 7, 0)]
    assert store.clear_schedules("quarterly") == 1
    clock.now = at(24, 7, 15)
    assert sched.run_due() == []
    store.close()


def test_a_failing_schedule_does_not_stop_the_others(tmp_path: Path):
    store = AudioStore(tmp_path / "audio.db")
    for name in ("a", "b"):
        store.put_schedule(spec(name, "* * * * *"))
    fired = []

    def fire(s: ScheduleSet, _m: dt.datetime) -> None:
        if s.schedule_id == "a":
            raise RuntimeError("clip vanished")
        fired.append(s.schedule_id)

    assert Scheduler(store, TZ, fire, Clock(at(23, 9, 0))).run_due() == ["a", "b"]
    assert fired == ["b"]
    store.close()
