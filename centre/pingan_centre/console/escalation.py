"""The escalation ladder: an alarm not acknowledged in time climbs, one rung at a time.

`tick(now)` is called about once a second with the clock the caller chose (tests pass
their own). A rung fires once per alarm: EscalationFired is unique per (alarm, step), so
two centre processes cannot both fire it. Shelved alarms return when their time is up.
"""

from __future__ import annotations

from datetime import datetime

from django.db import IntegrityError, transaction

from pingan_centre.console import live
from pingan_centre.console.config import Step
from pingan_centre.console.lifecycle import audit, record
from pingan_centre.console.logs import log
from pingan_centre.console.models import Alarm, EscalationFired
from pingan_centre.console.notify import Notifier


def tick(now: datetime, ladder: tuple[Step, ...], notifiers: dict[str, Notifier]) -> int:
    """Fire every rung that is due; return how many fired."""
    fired = 0
    for alarm in Alarm.objects.filter(state=Alarm.State.SHELVED, shelved_until__lte=now):
        _unshelve(alarm.pk, now)
    due = Alarm.objects.filter(state=Alarm.State.NEW).select_related("station")
    for alarm in due:
        waited = (now - alarm.raised_at).total_seconds()
        for level, step in enumerate(ladder, start=1):
            if (waited >= step.after_s and alarm.escalation < level
                    and _fire(alarm, level, step, now, notifiers)):
                fired += 1
    return fired


def _fire(alarm: Alarm, level: int, step: Step, now: datetime,
          notifiers: dict[str, Notifier]) -> bool:
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
                   f"{step.name}: {step.after_s:.0f} s unacknowledged")
            audit("system", "alarm.escalate", f"alarm:{alarm.pk}", now, step=step.name,
                  notified=sent)
    except IntegrityError:
        return False
    alarm.escalation = level
    message = {"alarm": alarm.pk, "station": alarm.station_id,
               "village": alarm.station.village, "step": step.name,
               "waited_s": round((now - alarm.raised_at).total_seconds())}
    for name in sent:
        notifiers[name](message)
    live.bump()
    return True


def _unshelve(alarm_id: int, now: datetime) -> None:
    with transaction.atomic():
        alarm = Alarm.objects.select_for_update().get(pk=alarm_id)
        if alarm.state != Alarm.State.SHELVED:
            return
        alarm.state, alarm.shelved_until = Alarm.State.NEW, None
        alarm.save()
        record(alarm, "unshelve", Alarm.State.SHELVED, "system", now, "shelf time is up")
    log("info", "alarm.unshelved", alarm=alarm_id)
    live.bump()
