"""Schedules per station or group (issue 23): recurring broadcasts kept on the stations.

An officer writes a rule people read ("每天 07:00", "工作日 18:30", days of the week and a
time, or a raw cron for experts); it is kept as the stations' own cron (pingan_centre/
cron.py, the unit's own file) and described back from it, in the reader's language. What
it sounds is a text, a tone or a recording, as for broadcasts; whom it goes to is a target
as for broadcasts (a station, a set, a saved group, a village, all), resolved each time.

Each target station gets a `schedule.set` (a recording first as `clip.put` chunks), and
answers with its `cmd.result`. The stations report what they keep on their state
(`schedules`: id, cron and digest of each); where that differs from what the centre
pushed (missing, extra, a different time or content) the console shows the drift per
station and pushes again on request: `schedule.set` for what is missing or different,
`schedule.clear` for what the station has and the centre does not. Saving, pushing and
deleting are audited.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jsonschema
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, pgettext

from pingan_centre import cron as cron_rules
from pingan_centre.console import broadcast
from pingan_centre.console.lifecycle import NotAllowed, audit
from pingan_centre.console.link import Effects
from pingan_centre.console.models import Command, Schedule, Station
from pingan_centre.console.validate import _validator

RULES = ("daily", "workdays", "weekly", "cron")
# Day numbers as cron has them (0 Sunday), in the order a week is read in China.
WEEK = ("1", "2", "3", "4", "5", "6", "0")
DAY_NAMES = {"0": gettext_lazy("Sun"), "1": gettext_lazy("Mon"), "2": gettext_lazy("Tue"),
             "3": gettext_lazy("Wed"), "4": gettext_lazy("Thu"), "5": gettext_lazy("Fri"),
             "6": gettext_lazy("Sat")}

# A station's schedule against the centre's, as an officer reads it.
SYNC = {
    "in_sync": gettext_lazy("in sync"),
    "missing": gettext_lazy("missing at the station"),
    "time": gettext_lazy("different time at the station"),
    "content": gettext_lazy("different content at the station"),
    "extra": gettext_lazy("at the station only"),
    "unknown": gettext_lazy("not reported by the station"),
}
PUSH = {
    "none": gettext_lazy("not pushed yet"),
    "not_sent": gettext_lazy("not sent: no broker link"),
    "offline": gettext_lazy("pending: station offline, queued at the broker"),
    "sent": gettext_lazy("sent, no answer yet"),
    "accepted": gettext_lazy("accepted"),
    "refused": gettext_lazy("refused"),
}
CODES = {**broadcast.CODES,
         "too_many_schedules": gettext_lazy("too many schedules at the station"),
         "unknown_schedule": gettext_lazy("no such schedule at the station")}


class BadSchedule(ValueError):
    """The schedule is not one a station would take; the message says why."""


# --- rules ---------------------------------------------------------------------------

def _hhmm(text: str) -> tuple[int, int]:
    try:
        hour, minute = (int(x) for x in text.strip().split(":", 1))
    except ValueError as exc:
        raise BadSchedule(_("not a time of day: %(text)s") % {"text": text}) from exc
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise BadSchedule(_("not a time of day: %(text)s") % {"text": text})
    return hour, minute


def cron_for(rule: str, time: str = "", days: Iterable[str] = (), cron: str = "") -> str:
    """The stations' cron for a rule from the form; raises BadSchedule."""
    if rule == "cron":
        expr = " ".join(cron.split())
        try:
            cron_rules.Cron(expr)
        except cron_rules.CronError as exc:
            raise BadSchedule(_("not a cron expression a station takes: %(why)s") % {
                "why": str(exc)}) from exc
        if len(expr) > 128:
            raise BadSchedule(_("not a cron expression a station takes: %(why)s") % {
                "why": "over 128 characters"})
        return expr
    hour, minute = _hhmm(time)
    if rule == "daily":
        return f"{minute} {hour} * * *"
    if rule == "workdays":
        return f"{minute} {hour} * * 1-5"
    if rule == "weekly":
        chosen = [d for d in WEEK if d in set(days)]
        if not chosen:
            raise BadSchedule(_("choose at least one day of the week"))
        return f"{minute} {hour} * * {','.join(sorted(chosen))}"
    raise BadSchedule(_("choose how often it plays"))


@dataclass(frozen=True)
class Rule:
    """A cron read back as the form's rule (`cron` when it is none of the simple ones)."""

    kind: str
    time: str = ""
    days: tuple[str, ...] = ()


def rule_of(cron: str) -> Rule:
    parts = cron.split()
    if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit() and parts[2:4] == [
            "*", "*"]:
        minute, hour, weekday = int(parts[0]), int(parts[1]), parts[4]
        if minute <= 59 and hour <= 23:
            time = f"{hour:02d}:{minute:02d}"
            if weekday == "*":
                return Rule("daily", time)
            try:
                days = cron_rules.Cron(cron).weekdays
            except cron_rules.CronError:
                return Rule("cron")
            named = tuple(d for d in WEEK if int(d) in days)
            if set(named) == {"1", "2", "3", "4", "5"}:
                return Rule("workdays", time)
            return Rule("weekly", time, named)
    return Rule("cron")


def describe(cron: str) -> str:
    """The rule in the reader's language: "每天 07:00", "weekdays at 18:30"."""
    rule = rule_of(cron)
    if rule.kind == "daily":
        return _("daily at %(time)s") % {"time": rule.time}
    if rule.kind == "workdays":
        return _("weekdays at %(time)s") % {"time": rule.time}
    if rule.kind == "weekly":
        if set(rule.days) == {"6", "0"}:
            return _("weekends at %(time)s") % {"time": rule.time}
        between = pgettext("between days of the week", ", ")
        names = between.join(str(DAY_NAMES[d]) for d in rule.days)
        return _("every %(days)s at %(time)s") % {"days": names, "time": rule.time}
    return _("by the cron expression %(cron)s") % {"cron": cron}


# --- what is sent --------------------------------------------------------------------

def set_payload(s: Schedule, by: str) -> dict[str, Any]:
    """The `schedule.set` for `s` (its id filled in per station when sent)."""
    payload: dict[str, Any] = {"cmd": "schedule.set", "id": "x", "by": by[:64],
                               "schedule_id": s.id, "cron": s.cron, "repeat": s.repeat}
    if s.kind == "text":
        payload["text"] = s.text
    elif s.kind == "tone":
        payload["tone"] = s.tone
    else:
        payload["clip"] = s.id
    if s.volume is not None:
        payload["volume"] = s.volume
    return payload


def digest(s: Schedule) -> str:
    """What the station reports for `s` when it keeps it as pushed."""
    return cron_rules.digest(cron=s.cron, clip=s.id if s.kind == "clip" else None,
                             text=s.text if s.kind == "text" else None,
                             tone=s.tone if s.kind == "tone" else None, repeat=s.repeat,
                             volume=s.volume)


def stations_of(s: Schedule) -> list[Station]:
    kind, _sep, value = s.target.partition(":")
    if kind == "stations":
        return list(Station.objects.filter(name__in=s.chosen).order_by("village", "name"))
    try:
        return broadcast.targets(kind, [value])[1]
    except broadcast.BadBroadcast:
        return []  # the group was deleted since: the schedule reaches no one


def save(*, name: str, rule: str, time: str = "", days: Iterable[str] = (),
         cron: str = "", content: str, text: str = "", tone: str = "", clip: bytes = b"",
         clip_name: str = "", clip_type: str = "", repeat: int = 1,
         volume: float | None = None, target: str = "all", chosen: Iterable[str] = (),
         schedule_id: str = "", by: str, now: datetime, effects: Effects) -> str:
    """Check and keep a schedule (new, or `schedule_id` changed), then push it to its
    stations; those it no longer reaches are told to clear it. Returns its id."""
    name = name.strip()[:100]
    if not name:
        raise BadSchedule(_("a schedule needs a name"))
    expr = cron_for(rule, time, days, cron)
    old = Schedule.objects.filter(pk=schedule_id).first() if schedule_id else None
    if schedule_id and old is None:
        raise BadSchedule(_("no schedule %(id)s") % {"id": schedule_id})
    s = old or Schedule(id=f"sc-{uuid.uuid4().hex[:10]}", by=by, created_at=now)
    if content == "clip" and not clip and old is not None and old.kind == "clip":
        clip, clip_name, clip_type = bytes(old.clip or b""), old.clip_name, old.clip_type
    if content == "clip" and not clip:
        raise BadSchedule(_("choose a sound file to upload"))
    if len(clip) > broadcast.CLIP_MAX_BYTES:
        raise BadSchedule(_("the clip is over %(n)d MiB") % {
            "n": broadcast.CLIP_MAX_BYTES >> 20})
    if content not in ("text", "tone", "clip"):
        raise BadSchedule(_("choose text, a clip or a tone"))
    s.name, s.cron, s.kind, s.repeat, s.volume = name, expr, content, repeat, volume
    s.text = text.strip() if content == "text" else ""
    s.tone = tone if content == "tone" else ""
    s.clip = clip if content == "clip" else None
    s.clip_name = clip_name[:200] if content == "clip" else ""
    s.clip_type = clip_type[:100] if content == "clip" else ""
    # The stations' own contract (the published command schema): what they would refuse
    # as invalid_command is refused here, before anything is kept or sent.
    error = jsonschema.exceptions.best_match(_validator("command").iter_errors(
        set_payload(s, by)))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise BadSchedule(_("not a schedule a station would take: %(why)s") % {
            "why": f"{where} {error.message}".strip()[:300]})
    try:
        stored, stations = broadcast.targets(target, chosen)
    except broadcast.BadBroadcast as exc:
        raise BadSchedule(str(exc)) from exc
    if not stations:
        raise BadSchedule(_("no stations in that target"))
    before = {st.name: st for st in stations_of(old)} if old is not None else {}
    s.target = stored
    s.chosen = [st.name for st in stations] if stored == "stations" else []
    s.updated_at = now
    with transaction.atomic():
        s.save()
        audit(by, "schedule.save", f"schedule:{s.id}", now, name=s.name, cron=s.cron,
              content=s.kind, text=s.text, tone=s.tone, clip=s.clip_name, repeat=s.repeat,
              volume=s.volume, to=s.target, stations=[st.name for st in stations])
        _push(s, stations, by, now, effects)
        gone = [st for n, st in sorted(before.items()) if n not in {x.name for x in stations}]
        _clear(s.id, gone, by, now, effects)
    return s.id


def _push(s: Schedule, stations: list[Station], by: str, now: datetime,
          effects: Effects) -> None:
    """`schedule.set` (after its clip's chunks) to each of `stations`, as a new version."""
    s.version += 1
    s.save(update_fields=["version"])
    tag = f"{s.id}.{s.version}"
    payload = set_payload(s, by)
    chunks = broadcast._chunks(s.id, bytes(s.clip), by) if s.kind == "clip" and s.clip \
        else []
    batch: broadcast.Outgoing = []
    for st in stations:
        cid = broadcast.command_id("ss", tag, st.name)
        broadcast._send(st, cid, {**payload, "id": cid}, by, now, effects, before=[
            {**c, "id": broadcast.command_id(f"sk{c['chunk']}", tag, st.name)}
            for c in chunks], batch=batch)
    transaction.on_commit(lambda: broadcast.publish(batch, effects))


def _clear(schedule_id: str, stations: Iterable[Station], by: str, now: datetime,
           effects: Effects) -> None:
    """`schedule.clear` of `schedule_id` (any id a station reported: up to 64
    characters, so not in the command id) to each of `stations`."""
    tag = uuid.uuid4().hex[:12]
    batch: broadcast.Outgoing = []
    for st in stations:
        cid = broadcast.command_id("sx", tag, st.name)
        broadcast._send(st, cid, {"cmd": "schedule.clear", "id": cid, "by": by[:64],
                                  "schedule_id": schedule_id}, by, now, effects, batch=batch)
    transaction.on_commit(lambda: broadcast.publish(batch, effects))


def delete(schedule_id: str, by: str, now: datetime, effects: Effects) -> list[str]:
    """Forget the schedule and tell each of its stations to clear it."""
    with transaction.atomic():
        s = Schedule.objects.select_for_update().filter(pk=schedule_id).first()
        if s is None:
            raise NotAllowed(_("no schedule %(id)s") % {"id": schedule_id})
        stations = stations_of(s)
        _clear(s.id, stations, by, now, effects)
        s.delete()
        names = [st.name for st in stations]
        audit(by, "schedule.delete", f"schedule:{schedule_id}", now, name=s.name,
              stations=names)
    return names


def push_again(*, schedule_id: str = "", station: str = "", by: str, now: datetime,
               effects: Effects) -> list[str]:
    """Bring stations in line with the centre: for one schedule, its stations that
    differ; for one station, every schedule it differs on, and a clear for each it has
    that the centre does not. Returns what was sent, as "station schedule" pairs."""
    sent: list[str] = []
    with transaction.atomic():
        if schedule_id:
            s = Schedule.objects.select_for_update().filter(pk=schedule_id).first()
            if s is None:
                raise NotAllowed(_("no schedule %(id)s") % {"id": schedule_id})
            off = [r.st for r in sync(s) if r.status != "in_sync"]
            if off:
                _push(s, off, by, now, effects)
                sent += [f"{st.name} {s.id}" for st in off]
        else:
            st = Station.objects.filter(pk=station).first()
            if st is None:
                raise NotAllowed(_("unknown station in %(names)s") % {"names": station})
            for d in drift([st]):
                for s, _status in d.differs:
                    _push(s, [st], by, now, effects)
                    sent.append(f"{st.name} {s.id}")
                for extra in d.extra:
                    _clear(extra, [st], by, now, effects)
                    sent.append(f"{st.name} -{extra}")
        audit(by, "schedule.push", f"schedule:{schedule_id}" if schedule_id
              else f"station:{station}", now, sent=sent)
    return sent


# --- what the stations did and keep --------------------------------------------------

@dataclass
class SyncRow:
    """One target station of a schedule: what it keeps against the centre's, and how
    the last push went."""

    st: Station
    status: str  # a key of SYNC
    push: str = "none"  # a key of PUSH
    code: str = ""
    reason: dict[str, str] = field(default_factory=dict)

    @property
    def station(self) -> str:
        return self.st.name

    @property
    def status_text(self) -> str:
        return str(SYNC[self.status])

    @property
    def push_text(self) -> str:
        label = str(PUSH[self.push])
        if self.code:
            return _("%(result)s: %(why)s") % {"result": label,
                                              "why": CODES.get(self.code, self.code)}
        return label


def _status(reported: list[dict[str, Any]] | None, s: Schedule, want: str) -> str:
    if reported is None:
        return "unknown"
    mine = next((r for r in reported if r.get("schedule_id") == s.id), None)
    if mine is None:
        return "missing"
    if mine.get("digest") == want:
        return "in_sync"
    return "time" if " ".join(str(mine.get("cron", "")).split()) != s.cron else "content"


def sync(s: Schedule) -> list[SyncRow]:
    """Each target station of `s`: in sync or how it differs, and its last push."""
    want = digest(s)
    rows = [SyncRow(st, _status(st.schedules, s, want)) for st in stations_of(s)]
    latest: dict[str, Command] = {}
    for c in Command.objects.filter(id__startswith=f"ss:{s.id}.").order_by("created_at"):
        latest[c.station_id] = c  # the last push to each station wins
    for row in rows:
        last = latest.get(row.station)
        if last is None:
            continue
        result = last.result or {}
        if last.result_at is not None:
            row.push = "accepted" if result.get("ok") else "refused"
            error = result.get("error") or {}
            row.code = str(error.get("code", "")) if not result.get("ok") else ""
            row.reason = error.get("message") or {}
        elif not last.sent:
            row.push = "not_sent"
        else:
            row.push = "sent" if row.st.online else "offline"
    return rows


@dataclass
class Drift:
    """One station that differs from the centre: the schedules it lacks or keeps
    differently (with the SYNC key), and the ids it keeps that the centre has not."""

    st: Station
    differs: list[tuple[Schedule, str]]
    extra: list[str]



def drift(stations: Iterable[Station] | None = None) -> list[Drift]:
    """Every station (or those given) that keeps something other than the centre's
    schedules for it. A station that does not report its schedules is not listed."""
    wanted: dict[str, list[tuple[Schedule, str]]] = {}
    for s in Schedule.objects.all():
        want = digest(s)
        for st in stations_of(s):
            wanted.setdefault(st.name, []).append((s, want))
    pool = list(stations) if stations is not None else list(Station.objects.filter(
        schedules__isnull=False).order_by("village", "name"))
    out = []
    for st in pool:
        if st.schedules is None:
            continue
        mine = wanted.get(st.name, [])
        differs = [(s, status) for s, want in mine
                   if (status := _status(st.schedules, s, want)) != "in_sync"]
        known = {s.id for s, _w in mine}
        extra = sorted(str(r.get("schedule_id")) for r in st.schedules
                       if r.get("schedule_id") not in known)
        if differs or extra:
            out.append(Drift(st, differs, extra))
    return out


def in_sync_count(rows: list[SyncRow]) -> str:
    return _("in sync at %(n)d of %(total)d") % {
        "n": sum(r.status == "in_sync" for r in rows), "total": len(rows)}
