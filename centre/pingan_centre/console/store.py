"""One incoming MQTT message into the database: state, events, alarms, command results.

Called by the ingest worker inside a transaction; raises `Rejected` for a payload to keep
aside. Every alarm change writes a Transition (the duty screen's version follows it) and,
once committed, tells the worker's `Effects` (the screens hear of it at once).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction

from pingan_centre import topics
from pingan_centre.console import cliplib, telemetry
from pingan_centre.console.lifecycle import record, send_ack
from pingan_centre.console.link import Effects
from pingan_centre.console.logs import log
from pingan_centre.console.models import Alarm, Command, Event, Quarantined, Station
from pingan_centre.console.validate import Rejected, check
from pingan_centre.console.words import both

SNAPSHOT_WINDOW = timedelta(minutes=5)
HEAD_BYTES = 4096


def route(topic: str, township: str) -> tuple[str, str] | None:
    """(station, kind) for a topic of this township, kind being the topic table's name
    (edge.contract.topics.TABLE); None for what the centre ignores (commands)."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[:3] != ["pingan", "v1", township]:
        raise Rejected(f"主题不在 {topics.PREFIX}/{township}/ 之下",
                       f"topic outside {topics.PREFIX}/{township}/")
    station, rest = parts[3], "/".join(parts[4:])
    spec = topics.spec_for(rest)
    if spec is None:
        raise Rejected("未知主题", "unknown topic")
    if topics.CENTRE not in spec.subscribers:
        return None
    return station, spec.name


def quarantine(topic: str, payload: bytes, reason: str, now: datetime) -> None:
    Quarantined.objects.create(topic=topic[:300], received_at=now, size=len(payload),
                               reason=reason, head=payload[:HEAD_BYTES])


Checked = tuple[str, str, dict[str, Any]]  # (topic, kind, payload)


def parse(topic: str, payload: bytes, township: str, max_bytes: int) -> Checked | None:
    """Route and validate one message (no database); None for what the centre ignores."""
    routed = route(topic, township)
    if routed is None:
        return None
    station_name, kind = routed
    data = check(topics.by_name(kind).schema, payload, max_bytes)
    if data.get("station") != station_name or data.get("township") != township:
        named = f"{data.get('township')}/{data.get('station')}"
        raise Rejected(f"内容写的站点 {named} 与主题的 {township}/{station_name} 不符",
                       f"payload names {named}, topic names {township}/{station_name}")
    return topic, kind, data


def store(batch: list[Checked], now: datetime, effects: Effects) -> None:
    """Store a batch of checked messages, in arrival order, with few queries: the
    stations they name, the events not yet seen (one INSERT), then what each means."""
    _ensure_stations({(d["station"], d["township"]) for _, _, d in batch})
    ids = [d["id"] for _, kind, d in batch if kind not in ("state", "health")]
    seen = set(Event.objects.filter(id__in=ids).values_list("id", flat=True))
    repeated = set(seen)
    fresh: list[Event] = []
    for _, kind, data in batch:
        if kind == "state":
            _state(data, now)
        elif kind == "health":
            telemetry.store(data, now)
        elif data["id"] not in seen:
            seen.add(data["id"])  # at-least-once delivery: a copy in the same batch
            fresh.append(Event(id=data["id"], station_id=data["station"], type=data["type"],
                               seq=data.get("seq", 0), priority=data.get("priority", 3),
                               ts=data["ts"], clock_synced=data["clock_synced"],
                               received_at=now, payload=data["payload"]))
    Event.objects.bulk_create(fresh)
    _ack_again([d["id"] for _, _, d in batch if d.get("type") == "alarm.panic"
                and d["id"] in repeated], now, effects)
    for event in fresh:
        handler = _BY_TYPE.get(event.type)
        if handler:
            try:
                with transaction.atomic():
                    handler(Station.objects.get(pk=event.station_id), event, now, effects)
            except DatabaseError:
                raise  # the batch is retried
            except Exception as exc:  # a bug here must not stop ingest: keep it visible
                log("error", "ingest.internal_error", event_id=event.id, error=repr(exc),
                    action="a bug in the centre: report it with this event (kept aside)")
                topic = topics.station_topic("events", settings.CENTRE.township,
                                             event.station_id)
                quarantine(topic, json.dumps(event.payload).encode(),
                           both(f"平台内部错误（事件 {event.id}）",
                                f"internal error on {event.id}: {exc!r}"), now)
    names = {e.station_id for e in fresh}
    if names:
        Station.objects.filter(name__in=names).update(last_seen=now)


def _ack_again(event_ids: list[str], now: datetime, effects: Effects) -> None:
    """A press the township already has, sent again: after a power cut the station's
    delivery mark can be lost, and it re-sends. If the officer has acknowledged that
    alarm, the station must hear so again: its LED would otherwise stay "delivered, not
    acknowledged", and an open alarm holds back its update reboot, for good."""
    for event in (Event.objects.filter(id__in=set(event_ids), alarm__acked_at__isnull=False)
                  .select_related("alarm", "alarm__station")):
        alarm = event.alarm
        assert alarm is not None
        with transaction.atomic():
            send_ack(alarm, event.id, alarm.ack_by, now, effects)
        log("info", "ingest.ack_again", event_id=event.id, station=event.station_id,
            action="none: the station re-sent an acknowledged alarm and is told again")


def _ensure_stations(named: set[tuple[str, str]]) -> None:
    known = set(Station.objects.filter(name__in=[n for n, _ in named])
                .values_list("name", flat=True))
    villages = settings.CENTRE.villages
    Station.objects.bulk_create(
        [Station(name=n, township=t, village=villages.get(n, "")) for n, t in named
         if n not in known], ignore_conflicts=True)


def _state(data: dict[str, Any], now: datetime) -> None:
    st = Station.objects.get(pk=data["station"])
    # The Last Will carries ts = null: the broker, not the station, says it went offline,
    # and nobody knows when the station last spoke. It never goes back in time.
    if data["ts"] is None:
        st.online = False
        st.save(update_fields=["online"])
        return
    # States are taken in the order they reach the township, never by the station's own
    # `ts`: a clock a day ahead (clock_synced false) hid every later state (issue 19). The
    # broker keeps one retained state, the latest, so a replay brings nothing older.
    st.online = data["online"]
    st.state_ts = data["ts"]
    if data["online"]:
        st.last_seen = now
    st.problems = data.get("problems", [])
    st.pending = data.get("pending")
    st.version = data["version"]
    st.clock_synced = data["clock_synced"]
    st.counters = data.get("counters", {})
    st.clips = data.get("clips")
    st.schedules = data.get("schedules")
    st.label = data.get("name", "") or st.label
    # [villages] in centre.toml names the village of a station it did not know at first.
    st.village = st.village or settings.CENTRE.villages.get(st.name, "")
    st.state_at = now
    st.save()  # not effects.changed(): station health on the cards follows within 30 s


def _panic(st: Station, event: Event, now: datetime, effects: Effects) -> None:
    if event.payload.get("source") == "selftest":
        Station.objects.filter(pk=st.pk).update(last_selftest=now)
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
        record(alarm, "press", old, "station", now,
               both(f"第 {alarm.presses} 次按下", f"press {alarm.presses}"))
    Event.objects.filter(pk=event.pk).update(alarm=alarm)
    if alarm.acked_at is not None and alarm.state != Alarm.State.NEW:
        # The alarm was already acknowledged: tell the station this press was seen too.
        send_ack(alarm, event.id, alarm.ack_by, now, effects)
    transaction.on_commit(effects.changed)


def _recent_snapshot(st: Station, now: datetime) -> Event | None:
    return (Event.objects.filter(station=st, type="camera.person",
                                 received_at__gte=now - SNAPSHOT_WINDOW)
            .order_by("-received_at").first())


def _person(st: Station, event: Event, now: datetime, effects: Effects) -> None:
    alarm = Alarm.objects.filter(station=st, state__in=Alarm.OPEN, snapshot=None).first()
    if alarm is not None and event.payload.get("snapshot_jpeg"):
        Alarm.objects.filter(pk=alarm.pk).update(snapshot=event)
        record(alarm, "snapshot", alarm.state, "station", now)
        transaction.on_commit(effects.changed)


def _cmd_result(st: Station, event: Event, now: datetime, effects: Effects) -> None:
    result = event.payload
    cmd_id = result.get("cmd_id")
    if not cmd_id:
        return
    if cliplib.is_ours(cmd_id):  # a clip library chunk or delete: no Command row
        cliplib.on_result(st, result, now, effects)
        return
    updated = Command.objects.filter(pk=cmd_id).update(
        result_ok=bool(result.get("ok")), result=result, result_at=now)
    command = Command.objects.filter(pk=cmd_id).select_related("alarm").first()
    if updated and command is not None and command.alarm is not None:
        alarm = command.alarm
        word = "station_received" if result.get("ok") else "station_error"
        message = (result.get("error") or {}).get("message") or {}
        note = both(message.get("zh", ""), message.get("en", "")) if message else ""
        record(alarm, word, alarm.state, "station", now, note)
        transaction.on_commit(effects.changed)


def snapshot_bytes(event: Event) -> bytes:
    """The picture; b"" when what the station sent is not base64 (the page says none)."""
    try:
        return base64.b64decode(str(event.payload.get("snapshot_jpeg", "")), validate=True)
    except (binascii.Error, ValueError):
        return b""


def _selftest(st: Station, event: Event, now: datetime, effects: Effects) -> None:
    """`pingan-edge selftest` on site: the grid shows when and whether it all passed."""
    Station.objects.filter(pk=st.pk).update(last_selftest=now,
                                            last_selftest_passed=event.payload["passed"])


_BY_TYPE: dict[str, Callable[[Station, Event, datetime, Effects], None]] = {
    "alarm.panic": _panic, "camera.person": _person, "cmd.result": _cmd_result,
    "selftest": _selftest}
