"""The stations' cron grammar (`schedule.set`'s `cron`) and the digest a station reports
for each schedule it keeps. Used by the unit, which fires schedules by it
(edge/audio/schedule.py), and by the township, which checks and describes the rules it
sends and compares what stations report: edge/contract/cron.py and
centre/pingan_centre/cron.py are the same file (the township runs without the unit's
package; tests/test_contract.py keeps them identical). Standard library only."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

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


def digest(*, cron: str, clip: str | None, text: str | None, tone: str | None,
           repeat: int, volume: float | None) -> str:
    """16 hex digits over what a schedule does: its cron (fields as split by whitespace)
    and its sound, repeat and volume; not its ids."""
    what = {"cron": " ".join(cron.split()), "clip": clip, "text": text, "tone": tone,
            "repeat": repeat, "volume": None if volume is None else float(volume)}
    canonical = json.dumps(what, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
