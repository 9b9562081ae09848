"""The escalation ladder: an alarm not acknowledged in time climbs, one rung at a time.

`tick(now)` is called about once a second with the clock the caller chose (tests pass
their own); `Ladder` is the part of the runtime that calls it, from its own thread. A
rung fires once per alarm: EscalationFired is unique per (alarm, step), so two centre
processes cannot both fire it. Shelved alarms return when their time is up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from pingan_centre.console.config import Step
from pingan_centre.console.lifecycle import audit, record
from pingan_centre.console.link import UNLINKED, Effects
from pingan_centre.console.logs import log
from pingan_centre.console.models import Alarm, EscalationFired
from pingan_centre.console.notify import Notifier
from pingan_centre.console.periodic import Periodic
from pingan_centre.console.words import both


class Ladder(Periodic):
    """The ticker: tick() every `every_s` from a thread of its own; close() ends it."""

    def __init__(self, ladder: tuple[Step, ...], notifiers: dict[str, Notifier],
                 effects: Effects, every_s: float = 1.0,
                 clock: Callable[[], datetime] = timezone.now) -> None:
        super().__init__("centre-escalation", every_s, event="escalation",
                         retry="check the database; the ladder retries every second")
        self.ladder, self.notifiers, self.effects, self.clock = ladder, notifiers, effects, clock

    def work(self) -> None:
        tick(self.clock(), self.ladder, self.notifiers, self.effects)


def tick(now: datetime, ladder: tuple[Step, ...], notifiers: dict[str, Notifier],
         effects: Effects = UNLINKED) -> int:
    """Fire every rung that is due; return how many fired."""
    fired = 0
    for alarm in Alarm.objects.filter(state=Alarm.State.SHELVED, shelved_until__lte=now):
        _unshelve(alarm.pk, now, effects)
    due = Alarm.objects.filter(state=Alarm.State.NEW).select_related("station")
    for alarm in due:
        waited = (now - alarm.raised_at).total_seconds()
        for level, step in enumerate(ladder, start=1):
            if (waited >= step.after_s and alarm.escalation < level
                    and _fire(alarm, level, step, now, notifiers, effects)):
                fired += 1
    return fired


def _fire(alarm: Alarm, level: int, step: Step, now: datetime,
          notifiers: dict[str, Notifier], effects: Effects) -> bool:
    sent = [name for name in step.notify if name in notifiers]
    try:
        with transaction.atomic():
            EscalationFired.objects.create(alarm=alarm, step=step.name, at=now, notified=sent)
            locked = Alarm.objects.select_for_update().get(pk=alarm.pk)
            if locked.state != Alarm.State.NEW:
                raise IntegrityError("acknowledged meanwhile")
            locked.escalation = max(locked.escalation, level)
            locked.loud = locked.loud or step.loud
            locked.save(update_fields=["escalation", "loud"])
            record(locked, "escalate", locked.state, "system", now,
                   both(f"{step.name}：{step.after_s:.0f} 秒未确认",
                        f"{step.name}: {step.after_s:.0f} s unacknowledged"))
            audit("system", "alarm.escalate", f"alarm:{alarm.pk}", now, step=step.name,
                  notified=sent)
    except IntegrityError:
        return False
    alarm.escalation = level
    message = {"alarm": alarm.pk, "station": alarm.station_id,
               "village": alarm.station.village, "step": step.name,
               "waited_s": round((now - alarm.raised_at).total_seconds())}
    effects.changed()
    for name in sent:
        notifiers[name](message)
    return True


def _unshelve(alarm_id: int, now: datetime, effects: Effects) -> None:
    with transaction.atomic():
        alarm = Alarm.objects.select_for_update().get(pk=alarm_id)
        if alarm.state != Alarm.State.SHELVED:
            return
        alarm.state, alarm.shelved_until = Alarm.State.NEW, None
        alarm.save()
        record(alarm, "unshelve", Alarm.State.SHELVED, "system", now,
               both("搁置时间已到", "shelf time is up"))
    log("info", "alarm.unshelved", alarm=alarm_id)
    effects.changed()
