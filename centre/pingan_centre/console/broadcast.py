"""Broadcasts to the villages' loudspeakers, and what each loudspeaker did (issue 23).

A broadcast is one `broadcast.play` Command per target station, id `bc:<broadcast>:<station>`
(a clip goes first as `clip.put` chunks on the same topic: QoS 1 keeps them in order, and
the station runs its commands in arrival order). Stopping sends `broadcast.stop` for that
play id to each of them (`bs:…`). Nothing is kept about a station's result but the
Commands sent and what the stations said: the command's `cmd.result` and the
`audio.playback` events carrying its id, read back each time the page asks. Sending and
stopping are audited.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import jsonschema
from django.db import transaction
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pingan_centre import topics
from pingan_centre.console import cliplib
from pingan_centre.console.lifecycle import NotAllowed, audit
from pingan_centre.console.link import Effects
from pingan_centre.console.models import (
    Broadcast,
    Clip,
    Command,
    Event,
    Station,
    StationGroup,
)
from pingan_centre.console.validate import _validator

CLIP_MAX_BYTES = 2 << 20
# Raw bytes per clip.put chunk: base64 and the JSON around it stay under the stations'
# default uplink.max_command_bytes (16 KiB).
CHUNK_BYTES = 11 * 1024
TONES = ("chime", "siren")

# What an officer reads for each result, in the page's language.
LABELS = {
    "not_sent": gettext_lazy("not sent: no broker link"),
    "clip_first": gettext_lazy("sending the recording first"),
    "offline": gettext_lazy("pending: station offline, queued at the broker"),
    "sent": gettext_lazy("sent, no answer yet"),
    "accepted": gettext_lazy("accepted"),
    "refused": gettext_lazy("refused"),
    "queued": gettext_lazy("waiting to play"),
    "started": gettext_lazy("playing"),
    "finished": gettext_lazy("played"),
    "preempted": gettext_lazy("cut off"),
    "resumed": gettext_lazy("resumed"),
    "stopped": gettext_lazy("stopped"),
    "stop_sent": gettext_lazy("stop sent"),
    "failed": gettext_lazy("failed"),
    "skipped": gettext_lazy("skipped"),
    "expired": gettext_lazy("expired, not played"),
}
# The refusal codes a station answers (docs/topics.md), as officers read them.
CODES = {
    "quiet_hours": gettext_lazy("quiet hours"),
    "audio_unavailable": gettext_lazy("loudspeaker unavailable"),
    "busy": gettext_lazy("station busy"),
    "expired": gettext_lazy("expired"),
    "unknown_clip": gettext_lazy("clip missing at the station"),
    "tts_failed": gettext_lazy("could not speak the text"),
    "invalid_command": gettext_lazy("invalid command"),
    "stopping": gettext_lazy("station stopping"),
    "internal_error": gettext_lazy("station error"),
    "too_large": gettext_lazy("too large"),
}
PHASES = ("started", "finished", "preempted", "resumed", "stopped", "failed", "skipped")


class BadBroadcast(ValueError):
    """The composed broadcast is not one a station would take; the message says why."""


def command_id(prefix: str, broadcast_id: str, station: str) -> str:
    cid = f"{prefix}:{broadcast_id}:{station}"
    if len(cid) <= 64:
        return cid
    # Station ids may be up to 64 characters; a command id may not be longer.
    return f"{prefix}:{broadcast_id}:{hashlib.sha256(station.encode()).hexdigest()[:24]}"


def targets(kind: str, value: Iterable[str]) -> tuple[str, list[Station]]:
    """The stations a target names, and the target as stored (`all`, `village:…`, …)."""
    values = [v for v in value if v]
    if kind == "all":
        return "all", list(Station.objects.order_by("name"))
    if kind == "village" and values:
        return f"village:{values[0]}", list(Station.objects.filter(village=values[0])
                                            .order_by("name"))
    if kind == "group" and values:
        group = StationGroup.objects.filter(name=values[0]).first()
        if group is None:
            raise BadBroadcast(_("no group named %(name)s") % {"name": values[0]})
        return f"group:{group.name}", list(group.stations.order_by("name"))
    if kind in ("station", "stations") and values:
        found = list(Station.objects.filter(name__in=values).order_by("name"))
        if len(found) != len(set(values)):
            raise BadBroadcast(_("unknown station in %(names)s") % {
                "names": ", ".join(sorted(set(values)))})
        return "stations", found
    raise BadBroadcast(_("choose whom to broadcast to"))


def send(*, content: str, text: str = "", tone: str = "", clip: bytes = b"",
         clip_name: str = "", clip_type: str = "", library_clip: str = "", repeat: int = 1,
         volume: float | None = None, priority: str = "normal",
         not_before: datetime | None = None, expires: datetime | None = None,
         target: str = "all", chosen: Iterable[str] = (), by: str, now: datetime,
         effects: Effects) -> str:
    """Check, record and send a broadcast; returns its id."""
    bid = uuid.uuid4().hex[:10]
    sound: dict[str, Any]
    if content == "clip" and clip and Clip.objects.filter(pk=cliplib.clip_id(clip)).exists():
        # The very recording the library keeps: played from there, not sent again.
        content, library_clip, clip = "library", cliplib.clip_id(clip), b""
    if content == "text":
        sound = {"text": text.strip()}
    elif content == "tone":
        sound = {"tone": tone}
    elif content == "library":
        chosen_clip = Clip.objects.defer("data").filter(pk=library_clip).first()
        if chosen_clip is None:
            raise BadBroadcast(_("choose a recording from the clip library"))
        sound = {"clip": chosen_clip.id}
        clip_name, clip_type = chosen_clip.name, chosen_clip.content_type
    elif content == "clip":
        if not clip:
            raise BadBroadcast(_("choose a sound file to upload"))
        if len(clip) > CLIP_MAX_BYTES:
            raise BadBroadcast(_("the clip is over %(n)d MiB") % {"n": CLIP_MAX_BYTES >> 20})
        sound = {"clip": f"bc-{bid}"}
    else:
        raise BadBroadcast(_("choose text, a clip or a tone"))
    play: dict[str, Any] = {"cmd": "broadcast.play", "id": command_id("bc", bid, "x"),
                            "by": by[:64], **sound, "repeat": repeat, "priority": priority}
    if volume is not None:
        play["volume"] = volume
    if not_before is not None:
        play["not_before"] = not_before.isoformat()
    if expires is not None:
        if expires <= now:
            raise BadBroadcast(_("the expiry time has already passed"))
        play["expires"] = expires.isoformat()
    # The stations' own contract (the published command schema): what they would refuse
    # as invalid_command is refused here, before anything is sent.
    error = jsonschema.exceptions.best_match(_validator("command").iter_errors(play))
    if error is None and not_before is not None and expires is not None and (
            not_before >= expires):
        error = jsonschema.ValidationError("not_before is not before expires: it could "
                                           "never play")
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise BadBroadcast(_("not a broadcast a station would take: %(why)s") % {
            "why": f"{where} {error.message}".strip()[:300]})
    stored, stations = targets(target, chosen)
    if not stations:
        raise BadBroadcast(_("no stations in that target"))
    # A library recording plays by its id where the station holds it; the others get it
    # through the library (windowed, resumed after failures) and the play once it is whole.
    lacking: list[Station] = []
    if content == "library":
        holding = cliplib.holding(sound["clip"], stations)
        lacking = [st for st in stations if st.name not in holding]
    with transaction.atomic():
        Broadcast.objects.create(
            id=bid, kind="clip" if content == "library" else content,
            text=sound.get("text", ""), tone=sound.get("tone", ""),
            clip=clip or None, clip_name=clip_name[:200], clip_type=clip_type[:100],
            library_clip=sound["clip"] if content == "library" else "", repeat=repeat,
            volume=volume, priority=priority, not_before=not_before, expires=expires,
            target=stored, by=by, created_at=now)
        chunks = _chunks(sound.get("clip", ""), clip, by) if clip else []
        batch: Outgoing = []
        for st in stations:
            cid = command_id("bc", bid, st.name)
            if st in lacking:  # sent by cliplib once the station holds the clip
                Command.objects.create(id=cid, station=st, cmd="broadcast.play",
                                       payload={**play, "id": cid}, by=by, created_at=now)
                continue
            _send(st, cid, {**play, "id": cid}, by, now, effects, before=[
                {**c, "id": command_id(f"bk{c['chunk']}", bid, st.name)} for c in chunks],
                batch=batch)
        transaction.on_commit(lambda: publish(batch, effects))
        if lacking:
            library = Clip.objects.defer("data").get(pk=sound["clip"])
            cliplib.distribute(library, lacking, by=by, now=now, effects=effects,
                               restart=False)
        audit(by, "broadcast.send", f"broadcast:{bid}", now, to=stored,
              stations=[s.name for s in stations], content=content,
              text=sound.get("text", ""), tone=sound.get("tone", ""), clip=clip_name,
              repeat=repeat, volume=volume, priority=priority,
              not_before=play.get("not_before", ""), expires=play.get("expires", ""))
    return bid


def _chunks(clip_id: str, data: bytes, by: str) -> list[dict[str, Any]]:
    digest = hashlib.sha256(data).hexdigest()
    n = (len(data) + CHUNK_BYTES - 1) // CHUNK_BYTES
    return [{"cmd": "clip.put", "by": by[:64], "clip_id": clip_id, "sha256": digest,
             "size": len(data), "chunk": i, "chunks": n,
             "data": base64.b64encode(data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]).decode()}
            for i in range(n)]


# Recorded Commands to publish: (Command id, topic, payload, chunks to send before it).
Outgoing = list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]


def _send(st: Station, cid: str, payload: dict[str, Any], by: str, now: datetime,
          effects: Effects, before: list[dict[str, Any]] | None = None,
          batch: Outgoing | None = None) -> None:
    """Record the Command; publish it (after the chunks `before`, not recorded: a clip
    that did not arrive shows as the play's `unknown_clip`) once the transaction commits.
    With `batch`, it is only added there: the caller publishes the batch (`publish`)."""
    command = Command.objects.create(id=cid, station=st, cmd=payload["cmd"], payload=payload,
                                     by=by, created_at=now)
    topic = topics.station_topic("cmd", st.township, st.name)
    if batch is not None:
        batch.append((command.pk, topic, payload, before or []))
        return
    transaction.on_commit(lambda: publish([(command.pk, topic, payload, before or [])],
                                          effects))


def publish(batch: Outgoing, effects: Effects) -> None:
    """Publish recorded Commands (each after its chunks), then mark those handed to the
    broker link as sent, in one UPDATE: a broadcast to a thousand stations must not take
    the database's write lock a thousand times while their results come in."""
    sent = []
    for pk, topic, payload, before in batch:
        if all(effects.send(topic, chunk) for chunk in before) and effects.send(topic,
                                                                                payload):
            sent.append(pk)
    for start in range(0, len(sent), 500):
        Command.objects.filter(pk__in=sent[start:start + 500]).update(sent=True)


def stop(bid: str, by: str, now: datetime, effects: Effects) -> list[str]:
    """Stop the broadcast everywhere it was sent: `broadcast.stop` for its play id to each
    station (queued at the broker for those offline). Returns the stations told."""
    if Broadcast.objects.filter(pk=bid, stopped_at__isnull=False).exists():
        audit(by, "broadcast.stop_refused", f"broadcast:{bid}", now, why="already stopped")
        raise NotAllowed(_("this broadcast was already stopped"))
    with transaction.atomic():
        broadcast = Broadcast.objects.select_for_update().filter(pk=bid).first()
        if broadcast is None:
            raise NotAllowed(_("no broadcast %(id)s") % {"id": bid})
        if broadcast.stopped_at is not None:  # stopped by someone else just now
            raise NotAllowed(_("this broadcast was already stopped"))
        plays = list(Command.objects.filter(id__startswith=f"bc:{bid}:",
                                            cmd="broadcast.play").select_related("station"))
        batch: Outgoing = []
        for play in plays:
            st = play.station
            cid = command_id("bs", bid, st.name)
            _send(st, cid, {"cmd": "broadcast.stop", "id": cid, "by": by[:64],
                            "broadcast_id": play.id}, by, now, effects, batch=batch)
        transaction.on_commit(lambda: publish(batch, effects))
        broadcast.stopped_at, broadcast.stopped_by = now, by
        broadcast.save(update_fields=["stopped_at", "stopped_by"])
        names = [p.station_id for p in plays]
        audit(by, "broadcast.stop", f"broadcast:{bid}", now, stations=names)
    return names


@dataclass
class StationResult:
    station: str
    village: str
    result: str
    code: str = ""  # the refusal code, as the station sent it
    reason: dict[str, str] = field(default_factory=dict)  # {zh, en}, as the station sent it
    steps: list[str] = field(default_factory=list)  # the audio.playback phases, in order
    played: bool = False

    @property
    def label(self) -> str:
        return str(LABELS.get(self.result, self.result))

    @property
    def text(self) -> str:
        """The result as the table shows it: "refused: quiet hours"."""
        if not self.code or self.code == "expired":
            return self.label
        return _("%(result)s: %(why)s") % {"result": self.label,
                                          "why": CODES.get(self.code, self.code)}

    @property
    def step_labels(self) -> list[str]:
        return [str(LABELS.get(s, s)) for s in self.steps]


def results(broadcast: Broadcast, now: datetime) -> list[StationResult]:
    """Each target station's result, from the Commands sent and what the stations said."""
    plays = list(Command.objects.filter(id__startswith=f"bc:{broadcast.id}:",
                                        cmd="broadcast.play").select_related("station")
                 .order_by("station__village", "station_id"))
    stops = {c.station_id: c for c in Command.objects.filter(
        id__startswith=f"bs:{broadcast.id}:", cmd="broadcast.stop")}
    phases: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for ev in Event.objects.filter(type="audio.playback",
                                   payload__cmd_id__in=[p.id for p in plays]).order_by(
            "station_id", "seq"):
        phase = ev.payload.get("phase", "")
        if phase in PHASES:
            phases.setdefault(ev.payload["cmd_id"], []).append(
                (phase, ev.payload.get("reason") or {}))
    out = []
    for play in plays:
        st: Station = play.station
        steps = phases.get(play.id, [])
        row = StationResult(st.name, st.village, "", steps=[s for s, _r in steps],
                            played="started" in [s for s, _r in steps])
        result = play.result or {}
        if play.result_at is not None and not result.get("ok"):
            error = result.get("error") or {}
            row.code = str(error.get("code", ""))
            row.reason = error.get("message") or {}
            row.result = "expired" if row.code == "expired" else "refused"
        elif steps:
            row.result, row.reason = steps[-1][0], steps[-1][1]
            if row.result == "skipped" and broadcast.expires and broadcast.expires <= now:
                row.result = "expired"
        elif play.result_at is not None:
            row.result = "queued" if (result.get("detail") or {}).get(
                "playing_now") is False else "accepted"
        elif broadcast.expires is not None and broadcast.expires <= now:
            row.result = "expired"  # never reached the station in time: it will refuse it
        elif not play.sent and str(play.payload.get("clip", "")).startswith("lib-"):
            row.result = "clip_first"
        elif not play.sent:
            row.result = "not_sent"
        elif not st.online:
            row.result = "offline"
        else:
            row.result = "sent"
        if (st.name in stops and row.result in ("offline", "sent", "accepted", "queued",
                                                  "clip_first",
                                                  "started", "resumed", "preempted")):
            row.result = "stop_sent"
        out.append(row)
    return out


def summary(rows: list[StationResult]) -> str:
    """One line, e.g. "played at 27 of 30; 2 offline, 1 refused: quiet hours"."""
    played = sum(r.played for r in rows)
    head = _("played at %(played)d of %(total)d") % {"played": played, "total": len(rows)}
    counts = Counter(r.result for r in rows if not r.played or r.result == "stopped")
    parts = []
    for key, words in (("offline", _("%(n)d offline")),
                       ("not_sent", _("%(n)d not sent")),
                       ("clip_first", _("%(n)d receiving the recording")),
                       ("sent", _("%(n)d not answered yet")),
                       ("accepted", _("%(n)d waiting to play")),
                       ("queued", _("%(n)d waiting to play")),
                       ("expired", _("%(n)d expired")),
                       ("stopped", _("%(n)d stopped")),
                       ("stop_sent", _("%(n)d stop sent")),
                       ("failed", _("%(n)d failed")),
                       ("skipped", _("%(n)d skipped"))):
        if counts.get(key):
            parts.append(words % {"n": counts[key]})
    for code, n in sorted(Counter(r.code for r in rows if r.result == "refused").items()):
        parts.append(_("%(n)d refused: %(why)s") % {"n": n, "why": CODES.get(code, code)})
    return head + (_("; ") + _(", ").join(parts) if parts else "")
