"""The one place an alarm changes state: permission, allowed step, the record, the audit.

Every function takes `now` (the clock is the caller's) and writes a Transition and an
AuditEntry in the same transaction as the change.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pingan_centre import topics
from pingan_centre.console.link import Effects
from pingan_centre.console.models import Alarm, AuditEntry, Command, Event, Station, Transition

S = Alarm.State

# action -> (permission, states it may start from, state it leads to)
STEPS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ack": ("console.ack_alarm", (S.NEW,), S.ACKNOWLEDGED),
    "dispatch": ("console.dispatch_alarm", (S.ACKNOWLEDGED, S.DISPATCHED), S.DISPATCHED),
    "on_scene": ("console.dispatch_alarm", (S.DISPATCHED,), S.ON_SCENE),
    "resolve": ("console.resolve_alarm", (S.ACKNOWLEDGED, S.DISPATCHED, S.ON_SCENE),
                S.RESOLVED),
    "shelve": ("console.shelve_alarm", (S.NEW, S.ACKNOWLEDGED), S.SHELVED),
    "reopen": ("console.reopen_alarm", (S.RESOLVED, S.SHELVED), S.ACKNOWLEDGED),
}


# What an officer reads when a step is refused (in the request's language).
ACTIONS = {"ack": gettext_lazy("acknowledge"), "dispatch": gettext_lazy("dispatch"),
           "on_scene": gettext_lazy("record arrival"), "resolve": gettext_lazy("resolve"),
           "shelve": gettext_lazy("shelve"), "reopen": gettext_lazy("reopen")}


class NotAllowed(Exception):
    """The user may not do this, or the alarm is not in a state where it can be done."""


def audit(user: str, action: str, target: str, now: datetime, **detail: Any) -> None:
    AuditEntry.objects.create(at=now, user=user, action=action, target=target, detail=detail)


def record(alarm: Alarm, action: str, old: str, by: str, now: datetime, note: str = "") -> None:
    Transition.objects.create(alarm=alarm, action=action, from_state=old, to_state=alarm.state,
                              by=by, at=now, note=note)


def act(alarm_id: int, action: str, user: Any, now: datetime, effects: Effects,
        note: str = "", **fields: Any) -> Alarm:
    """Apply `action` for `user` (a Django user) or raise NotAllowed saying why. The
    station's command and the screens' word go through `effects`, after the commit."""
    if action not in STEPS:
        raise NotAllowed(_("unknown action %(action)s") % {"action": action})
    perm, sources, target = STEPS[action]
    if not user.has_perm(perm):
        raise NotAllowed(_("%(user)s may not %(action)s") % {
            "user": user.username, "action": ACTIONS.get(action, action)})
    with transaction.atomic():
        alarm = Alarm.objects.select_for_update().select_related("station").get(pk=alarm_id)
        if alarm.state not in sources:
            raise NotAllowed(_("cannot %(action)s: the alarm is %(state)s") % {
                "action": ACTIONS.get(action, action), "state": Alarm.State(alarm.state).label})
        old = alarm.state
        alarm.state = target
        if action == "ack":
            alarm.acked_at, alarm.ack_by = now, user.username
        elif action == "dispatch":
            to = str(fields.get("to", "")).strip()
            if not to:
                raise NotAllowed(_("dispatch needs a department or person"))
            alarm.dispatched_to = to[:200]
            alarm.dispatched_at = alarm.dispatched_at or now
        elif action == "on_scene":
            alarm.on_scene_at = alarm.on_scene_at or now
        elif action == "resolve":
            outcome = fields.get("outcome", "")
            if outcome not in Alarm.Outcome.values:
                raise NotAllowed(_("resolve needs an outcome: genuine, false alarm, drill or test"))
            alarm.outcome, alarm.resolved_at = outcome, now
        elif action == "shelve":
            until, reason = fields.get("until"), str(fields.get("reason", "")).strip()
            if until is None or until <= now or not reason:
                raise NotAllowed(_("shelve needs a reason and an end time in the future"))
            alarm.shelved_until, alarm.shelve_reason = until, reason[:500]
            note = note or reason
        elif action == "reopen":
            alarm.outcome, alarm.resolved_at, alarm.shelved_until = "", None, None
        alarm.save()
        record(alarm, action, old, user.username, now, note)
        audit(user.username, f"alarm.{action}", f"alarm:{alarm.pk}", now, note=note,
              **{k: str(v) for k, v in fields.items()})
        if action == "ack":
            _send_ack(alarm, user.username, now, effects)
        transaction.on_commit(effects.changed)
    return alarm


def _send_ack(alarm: Alarm, by: str, now: datetime, effects: Effects) -> None:
    """alarm.ack to the station for every press in this alarm (its LED and siren follow)."""
    for event_id in Event.objects.filter(alarm=alarm, type="alarm.panic").values_list(
            "id", flat=True):
        cmd_id = send_ack(alarm, event_id, by, now, effects)
        if not alarm.ack_cmd:
            alarm.ack_cmd = cmd_id
            alarm.save(update_fields=["ack_cmd"])


def send_ack(alarm: Alarm, event_id: str, by: str, now: datetime, effects: Effects) -> str:
    """One `alarm.ack` for press `event_id`: recorded as a Command, published once the
    transaction commits (marked sent when the broker link took it). Returns its id."""
    st: Station = alarm.station
    cmd_id = f"ack-{uuid.uuid4().hex[:20]}"
    payload: dict[str, Any] = {"cmd": "alarm.ack", "id": cmd_id, "event_id": event_id,
                               "by": by[:64]}
    command = Command.objects.create(id=cmd_id, station=st, cmd="alarm.ack", payload=payload,
                                     alarm=alarm, by=by, created_at=now)
    topic = topics.station_topic("cmd", st.township, st.name)

    def publish() -> None:
        if effects.send(topic, payload):
            Command.objects.filter(pk=command.pk).update(sent=True)

    transaction.on_commit(publish)
    return cmd_id
