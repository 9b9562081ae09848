"""One incoming MQTT message into the database: state, events, alarms, command results.

Called by the ingest worker inside a transaction; raises `Rejected` for a payload to keep
aside. Every alarm change writes a Transition (the duty screen's version follows it).
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from pingan_centre.console import link, live
from pingan_centre.console.lifecycle import record
from pingan_centre.console.models import Alarm, Command, Event, Quarantined, Station
from pingan_centre.console.validate import Rejected, check

SNAPSHOT_WINDOW = timedelta(minutes=5)
HEAD_BYTES = 4096


def route(topic: str, township: str) -> tuple[str, str] | None:
    """(station, kind) for a topic of this township; None for what the centre ignores
    (its own commands, echoed back by the subscription)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[:3] != ["pingan", "v1", township]:
        raise Rejected(f"topic outside pingan/v1/{township}/: {topic}")
    station, rest = parts[3], "/".join(parts[4:])
    if rest == "cmd":
        return None
    if rest not in ("events", "state", "cmd/result"):
        raise Rejected(f"unknown topic {topic}")
    return station, rest


def quarantine(topic: str, payload: bytes, reason: str, now: datetime) -> None:
    Quarantined.objects.create(topic=topic[:300], received_at=now, size=len(payload),
                               reason=reason, head=payload[:HEAD_BYTES])


def handle(topic: str, payload: bytes, now: datetime, township: str, max_bytes: int) -> None:
    routed = route(topic, township)
    if routed is None:
        return
    station_name, kind = routed
    data = check("state" if kind == "state" else "event", payload, max_bytes)
    if data.get("station") != station_name or data.get("township") != township:
        raise Rejected(f"payload names {data.get('township')}/{data.get('station')}, "
                       f"topic names {township}/{station_name}")
    if kind == "state":
        _state(data, now)
    else:
        _event(data, now)


def _station(name: str, township: str) -> Station:
    village = settings.CENTRE.villages.get(name, "")
    station, _ = Station.objects.get_or_create(name=name, defaults={"township": township,
                                                                    "village": village})
    return station


def _state(data: dict[str, Any], now: datetime) -> None:
    st = _station(data["station"], data["township"])
    # A retained state can be older than one already seen (replayed after a reconnect).
    if st.state_ts and data["ts"] < st.state_ts:
        return
    st.online = data["online"]
    st.state_ts = data["ts"]
    if data["online"]:
        st.last_seen = now
    st.problems = data.get("problems", [])
    st.pending = data.get("pending")
    st.version = data["version"]
    st.clock_synced = data["clock_synced"]
    st.counters = data.get("counters", {})
    st.save()
    live.bump()


def _event(data: dict[str, Any], now: datetime) -> None:
    st = _station(data["station"], data["township"])
    Station.objects.filter(pk=st.pk).update(last_seen=now)
    try:
        with transaction.atomic():
            event = Event.objects.create(
                id=data["id"], station=st, type=data["type"], seq=data.get("seq", 0),
                priority=data.get("priority", 3), ts=data["ts"], received_at=now,
                payload=data["payload"])
    except IntegrityError:
        return  # at-least-once delivery: this id is already stored
    handler = _BY_TYPE.get(event.type)
    if handler:
        handler(st, event, now)


def _panic(st: Station, event: Event, now: datetime) -> None:
    if event.payload.get("source") == "selftest":
        Station.objects.filter(pk=st.pk).update(last_selftest=now)
        live.bump()
        return
    alarm = (Alarm.objects.select_for_update().filter(station=st, state__in=Alarm.OPEN)
             .order_by("-raised_at").first())
    if alarm is None:
        alarm = Alarm.objects.create(station=st, first_event=event.id, raised_at=now,
                                     station_ts=event.ts, snapshot=_recent_snapshot(st, now))
        record(alarm, "raise", "", "station", now)
    else:
        # A second press while it is open: the same incident, not a new card.
        old = alarm.state
        alarm.presses += 1
        if alarm.state == Alarm.State.SHELVED:
            alarm.state, alarm.shelved_until = Alarm.State.NEW, None
        alarm.save()
        record(alarm, "press", old, "station", now, f"press {alarm.presses}")
    Event.objects.filter(pk=event.pk).update(alarm=alarm)
    if alarm.acked_at is not None and alarm.state != Alarm.State.NEW:
        _ack_press(alarm, st, event, now)
    live.bump()


def _ack_press(alarm: Alarm, st: Station, event: Event, now: datetime) -> None:
    """The alarm was already acknowledged: tell the station this press was seen too."""
    cmd_id = f"ack-{uuid.uuid4().hex[:20]}"
    payload = {"cmd": "alarm.ack", "id": cmd_id, "event_id": event.id, "by": alarm.ack_by[:64]}
    command = Command.objects.create(id=cmd_id, station=st, cmd="alarm.ack", payload=payload,
                                     alarm=alarm, by=alarm.ack_by, created_at=now)
    topic = f"pingan/v1/{st.township}/{st.name}/cmd"

    def publish() -> None:
        if link.send(topic, payload):
            Command.objects.filter(pk=command.pk).update(sent=True)

    transaction.on_commit(publish)


def _recent_snapshot(st: Station, now: datetime) -> Event | None:
    return (Event.objects.filter(station=st, type="camera.person",
                                 received_at__gte=now - SNAPSHOT_WINDOW)
            .order_by("-received_at").first())


def _person(st: Station, event: Event, now: datetime) -> None:
    alarm = Alarm.objects.filter(station=st, state__in=Alarm.OPEN, snapshot=None).first()
    if alarm is not None and event.payload.get("snapshot_jpeg"):
        Alarm.objects.filter(pk=alarm.pk).update(snapshot=event)
        record(alarm, "snapshot", alarm.state, "station", now)
        live.bump()


def _cmd_result(st: Station, event: Event, now: datetime) -> None:
    result = event.payload
    cmd_id = result.get("cmd_id")
    if not cmd_id:
        return
    updated = Command.objects.filter(pk=cmd_id).update(
        result_ok=bool(result.get("ok")), result=result, result_at=now)
    command = Command.objects.filter(pk=cmd_id).select_related("alarm").first()
    if updated and command is not None and command.alarm is not None:
        alarm = command.alarm
        word = "station_received" if result.get("ok") else "station_error"
        error = (result.get("error") or {}).get("message", {}).get("en", "")
        record(alarm, word, alarm.state, "station", now, error)
        live.bump()


def snapshot_bytes(event: Event) -> bytes:
    return base64.b64decode(event.payload.get("snapshot_jpeg", ""))


_BY_TYPE = {"alarm.panic": _panic, "camera.person": _person, "cmd.result": _cmd_result}
