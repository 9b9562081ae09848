"""The township's clip library (issue 23 item 4): recordings checked at upload, sent to the
stations in `clip.put` chunks with a window, per-station progress, deletion, and resuming
or restarting after a failure.

A recording is checked with libsndfile (soundfile's wheel carries the same libsndfile 1.2
the stations decode with: WAV, MP3, OGG Vorbis/Opus, FLAC) and refused, with the reason,
when a station could not play it. It is kept in the database (`Clip`, id `lib-<sha256[:12]>`,
the same id on every station).

Sending: each station's copy (`ClipCopy`) has at most WINDOW chunks unanswered; every
chunk the station answers (`cmd.result`, command id `cl:<clip>:<attempt>:<chunk>`) moves
the window on, so the station's command queue (32 by default) never overflows and the
progress bar is the chunks answered. What happens after a failure:
- the link drops while the station runs: the broker keeps the chunks in the station's
  session and the station its upload in memory; the answers come back when it returns
  and the window moves on (resumed, nothing sent twice);
- the station restarts (stopped, killed, power cut): it discards a partial upload, so
  its answer to the next chunk is `clip_interrupted` (or `stopping`): the console restarts
  that station's upload from chunk 0 as a new attempt (new command ids, since a station
  answers an id once); answers to an older attempt are ignored;
- no answer for STALL_S while the station is online (chunks lost with a killed process):
  the ticker restarts it the same way;
- any other refusal (the library full, over the size limit, not audio) fails that copy
  with the station's reason; the officer sends it again after fixing that.
A station ends with the complete clip or none (its own rule: a clip becomes playable only
whole and verified). A copy restarts at most MAX_RESTARTS times by itself.

What a station holds is what it reports in its state (`clips`: id -> sha256[:16]), taken
over the console's own record when it is the newer of the two.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import soundfile
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pingan_centre import topics
from pingan_centre.console.lifecycle import audit
from pingan_centre.console.link import Effects
from pingan_centre.console.logs import log
from pingan_centre.console.models import Broadcast, Clip, ClipCopy, Command, Station
from pingan_centre.console.periodic import Periodic

# As the broadcast composer's chunks: base64 and the JSON around one stay under the
# stations' default uplink.max_command_bytes (16 KiB).
CHUNK_BYTES = 11 * 1024
# Chunks sent and not yet answered, per station (the station queues 32 commands).
WINDOW = 8
STALL_S = 30.0
MAX_RESTARTS = 10
# The stations' defaults (audio.clip_max_bytes, audio.clips_max): a station configured
# lower refuses with its own reason, shown on the page.
MAX_BYTES = 8 << 20
MAX_CLIPS = 64
FORMATS = {"WAV": "WAV", "MP3": "MP3", "OGG": "OGG", "FLAC": "FLAC"}
# Refusals after which the upload is sent again from chunk 0.
RESTART_CODES = {"clip_interrupted", "stopping", "busy", "internal_error"}

LABELS = {
    "complete": gettext_lazy("complete"),
    "partial": gettext_lazy("partial"),
    "missing": gettext_lazy("missing"),
    "deleting": gettext_lazy("deleting"),
    "failed": gettext_lazy("sending failed"),
}


class BadClip(ValueError):
    """The upload is not a recording the stations can play; the message says why."""


def check(data: bytes) -> tuple[str, float]:
    """(format, duration in s) of a recording every station can decode; BadClip if not."""
    if not data:
        raise BadClip(_("choose a sound file to upload"))
    if len(data) > MAX_BYTES:
        raise BadClip(too_big(len(data)))
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            kind, frames, rate = f.format, 0, f.samplerate
            while True:  # decode it all, as a station will
                block = f.read(65536, dtype="int16", always_2d=True)
                if not len(block):
                    break
                frames += len(block)
    except Exception as exc:  # libsndfile says why in its own words (English)
        raise BadClip(_("the stations cannot play this file (they play WAV, MP3, OGG and "
                        "FLAC): the decoder says %(why)s") % {"why": str(exc)[:200]}) from exc
    if kind not in FORMATS:
        raise BadClip(_("%(format)s files are not taken: upload WAV, MP3, OGG or FLAC")
                      % {"format": kind})
    if frames == 0 or rate <= 0:
        raise BadClip(_("the recording holds no sound"))
    return FORMATS[kind], round(frames / rate, 3)


def too_big(size: int) -> str:
    return _("the recording is %(size)d bytes, the stations take at most %(max)d") % {
        "size": size, "max": MAX_BYTES}


def clip_id(data: bytes) -> str:
    return "lib-" + hashlib.sha256(data).hexdigest()[:12]


def add(data: bytes, *, name: str, filename: str, content_type: str, by: str,
        now: datetime) -> Clip:
    """Check and keep a recording; the same file again is the clip already kept."""
    kind, duration = check(data)
    cid = clip_id(data)
    found = Clip.objects.defer("data").filter(pk=cid).first()
    if found is not None:
        return found
    if Clip.objects.count() >= MAX_CLIPS:
        raise BadClip(_("the library holds %(n)d recordings, as many as a station keeps: "
                        "delete one first") % {"n": MAX_CLIPS})
    with transaction.atomic():
        clip = Clip.objects.create(
            id=cid, name=(name.strip() or filename)[:200], filename=filename[:200],
            content_type=content_type[:100], data=data, size=len(data),
            sha256=hashlib.sha256(data).hexdigest(), format=kind, duration_s=duration, by=by,
            created_at=now)
        audit(by, "clip.add", f"clip:{cid}", now, name=clip.name, size=len(data),
              format=kind, duration_s=duration)
    return clip


@functools.lru_cache(maxsize=4)  # bounded: 4 clips of at most MAX_BYTES
def _data(cid: str) -> bytes:
    """A clip's bytes (immutable: the id is its hash), for the chunks."""
    return bytes(Clip.objects.values_list("data", flat=True).get(pk=cid))


def _chunk(clip: Clip, attempt: int, i: int, by: str) -> dict[str, Any]:
    data = _data(clip.id)
    return {"cmd": "clip.put", "id": f"cl:{clip.id}:{attempt}:{i}", "by": by[:64],
            "clip_id": clip.id, "sha256": clip.sha256, "size": clip.size, "chunk": i,
            "chunks": clip.chunks,
            "data": base64.b64encode(data[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]).decode()}


def _fill(copy: ClipCopy, effects: Effects) -> None:
    """Send the chunks that fit the window (published once the transaction commits)."""
    upto = min(copy.clip.chunks, copy.acked + WINDOW)
    todo = list(range(copy.sent, upto))
    if not todo:
        return
    copy.sent = upto
    copy.save(update_fields=["sent"])
    topic = topics.station_topic("cmd", copy.station.township, copy.station_id)
    payloads = [_chunk(copy.clip, copy.attempt, i, copy.by) for i in todo]

    def publish() -> None:
        for payload in payloads:
            if not effects.send(topic, payload):
                return  # no broker link: the ticker restarts it once the station answers

    transaction.on_commit(publish)


def _restart(copy: ClipCopy, now: datetime, effects: Effects, *, fresh: bool = False) -> None:
    copy.attempt += 1
    copy.restarts = 0 if fresh else copy.restarts + 1
    copy.acked = copy.sent = 0
    copy.state = ClipCopy.State.SENDING
    copy.error = None
    copy.updated_at = now
    copy.save()
    _fill(copy, effects)


def _copies() -> Any:
    return ClipCopy.objects.select_related("clip", "station").defer("clip__data")


def distribute(clip: Clip, stations: Iterable[Station], *, by: str, now: datetime,
               effects: Effects, restart: bool = True) -> list[str]:
    """Send `clip` to each station (again from chunk 0 where a copy was under way, unless
    `restart` is False: a broadcast waiting for the clip leaves an upload in progress be)."""
    names = []
    with transaction.atomic():
        for st in stations:
            copy, _created = ClipCopy.objects.get_or_create(
                clip=clip, station=st, defaults={
                    "state": ClipCopy.State.SENDING, "by": by, "started_at": now,
                    "updated_at": now})
            copy = _copies().select_for_update().get(pk=copy.pk)
            if not restart and not _created and copy.state == ClipCopy.State.SENDING:
                names.append(st.name)
                continue
            copy.by, copy.started_at = by, now
            _restart(copy, now, effects, fresh=True)
            names.append(st.name)
        audit(by, "clip.send", f"clip:{clip.id}", now, stations=names)
    return names


def delete(clip: Clip, stations: Iterable[Station], *, by: str, now: datetime,
           effects: Effects) -> list[str]:
    """`clip.delete` to each station; the copy is gone when the station says so."""
    names = []
    with transaction.atomic():
        for st in stations:
            copy, _created = ClipCopy.objects.get_or_create(
                clip=clip, station=st, defaults={
                    "state": ClipCopy.State.DELETING, "by": by, "started_at": now,
                    "updated_at": now})
            copy.attempt += 1
            copy.state, copy.error, copy.by, copy.updated_at = (
                ClipCopy.State.DELETING, None, by, now)
            copy.save()
            payload = {"cmd": "clip.delete", "id": f"cx:{clip.id}:{copy.attempt}",
                       "by": by[:64], "clip_id": clip.id}
            topic = topics.station_topic("cmd", st.township, st.name)
            transaction.on_commit(functools.partial(effects.send, topic, payload))
            names.append(st.name)
        audit(by, "clip.delete", f"clip:{clip.id}", now, stations=names)
    return names


def remove(clip: Clip, stations: list[Station], *, by: str, now: datetime) -> None:
    """Take a recording out of the library, once no station holds any of it (delete it
    from the stations first: the console would lose track of copies left behind)."""
    copies = {c.station_id: c for c in ClipCopy.objects.filter(clip=clip)}
    left = [h.station for h in held(clip, stations, copies) if h.status != "missing"]
    if left:
        raise BadClip(_("delete it from these stations first: %(names)s") % {
            "names": ", ".join(left)})
    with transaction.atomic():
        Clip.objects.filter(pk=clip.pk).delete()
        audit(by, "clip.remove", f"clip:{clip.id}", now, name=clip.name)
    _data.cache_clear()


# --- what the stations answer (the ingest worker, inside its transaction) -------------

def is_ours(cmd_id: str) -> bool:
    return cmd_id.startswith(("cl:", "cx:"))


def on_result(st: Station, result: dict[str, Any], now: datetime, effects: Effects) -> None:
    parts = str(result.get("cmd_id", "")).split(":")
    try:
        kind, cid, attempt = parts[0], parts[1], int(parts[2])
        chunk = int(parts[3]) if kind == "cl" else -1
    except (IndexError, ValueError):
        return
    copy = _copies().select_for_update().filter(clip_id=cid, station=st).first()
    if copy is None or copy.attempt != attempt:
        return  # an older attempt's answer: its upload was restarted
    error = result.get("error") or {}
    if kind == "cx":
        if copy.state == ClipCopy.State.DELETING:
            if result.get("ok") or error.get("code") == "unknown_clip":
                copy.state, copy.error = ClipCopy.State.DELETED, None
            else:
                copy.error = error
            copy.updated_at = now
            copy.save()
        return
    if copy.state != ClipCopy.State.SENDING:
        return
    if result.get("ok"):
        copy.acked = max(copy.acked, chunk + 1)
        copy.updated_at = now
        if (result.get("detail") or {}).get("complete"):
            copy.state, copy.acked = ClipCopy.State.COMPLETE, copy.clip.chunks
            copy.save()
            log("info", "clip.complete", clip=cid, station=st.name, attempt=attempt)
            _play_waiting(st, cid, now, effects)
            return
        copy.save()
        _fill(copy, effects)
    elif error.get("code") in RESTART_CODES and copy.restarts < MAX_RESTARTS:
        log("info", "clip.restart", clip=cid, station=st.name, attempt=attempt,
            code=error.get("code"), acked=copy.acked)
        _restart(copy, now, effects)
    else:
        copy.state, copy.error, copy.updated_at = ClipCopy.State.FAILED, error, now
        copy.save()
        log("warning", "clip.failed", clip=cid, station=st.name, code=error.get("code"),
            action="see the clip library page for the station's reason; send it again "
                   "after fixing that")


def _play_waiting(st: Station, cid: str, now: datetime, effects: Effects) -> None:
    """The broadcasts that waited for this clip at this station (broadcast.send) go now,
    unless stopped meanwhile or expired (the station would refuse those anyway)."""
    plays = list(Command.objects.select_for_update().filter(
        station=st, cmd="broadcast.play", sent=False, result_at__isnull=True,
        id__startswith="bc:", payload__clip=cid))
    if not plays:
        return
    stopped = set(Broadcast.objects.filter(
        id__in=[p.id.split(":")[1] for p in plays], stopped_at__isnull=False)
        .values_list("id", flat=True))
    topic = topics.station_topic("cmd", st.township, st.name)
    for play in plays:
        if play.id.split(":")[1] in stopped:
            continue

        def publish(play: Command = play) -> None:
            if effects.send(topic, play.payload):
                Command.objects.filter(pk=play.pk).update(sent=True)

        transaction.on_commit(publish)


def tick(now: datetime, effects: Effects) -> int:
    """Restart the uploads that stalled: nothing answered for STALL_S while the station
    is online (and since it came back). Returns how many."""
    since = now - timedelta(seconds=STALL_S)
    stalled = 0
    for pk in ClipCopy.objects.filter(state=ClipCopy.State.SENDING, updated_at__lt=since,
                                      station__online=True).values_list("pk", flat=True):
        with transaction.atomic():
            copy = _copies().select_for_update().get(pk=pk)
            back = copy.station.state_at
            if (copy.state != ClipCopy.State.SENDING or copy.updated_at >= since
                    or (back is not None and back >= since)):
                continue
            if copy.restarts >= MAX_RESTARTS:
                copy.state, copy.updated_at = ClipCopy.State.FAILED, now
                copy.error = {"code": "stalled", "message": {
                    "zh": "站点多次未应答，已停止发送", "en": "the station stopped answering"}}
                copy.save()
                continue
            log("info", "clip.stalled", clip=copy.clip_id, station=copy.station_id,
                attempt=copy.attempt, acked=copy.acked)
            _restart(copy, now, effects)
            stalled += 1
    return stalled


class Resumer(Periodic):
    """The ticker of the runtime: tick() every `every_s` from a thread of its own."""

    def __init__(self, effects: Effects, every_s: float = 5.0,
                 clock: Callable[[], datetime] = timezone.now) -> None:
        super().__init__("centre-clips", every_s, event="clip.tick",
                         retry="check the database; stalled uploads are retried later")
        self.effects, self.clock = effects, clock

    def work(self) -> None:
        tick(self.clock(), self.effects)


# --- what the page shows ----------------------------------------------------------------

@dataclass
class Held:
    """One clip at one station, as the page shows it."""

    station: str
    village: str
    online: bool
    status: str  # complete | partial | missing | deleting | failed
    acked: int = 0
    chunks: int = 0
    error: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return str(LABELS[self.status])

    @property
    def text(self) -> str:
        """The state as the page shows it: "partial · offline · <the station's reason>"."""
        from pingan_centre.console.templatetags.words import lang

        parts = [self.label]
        if not self.online:
            parts.append(_("offline"))
        if self.error:
            parts.append(lang(self.error.get("message")))
        return " · ".join(p for p in parts if p)

    @property
    def percent(self) -> int:
        return round(100 * self.acked / self.chunks) if self.chunks else 0


def held(clip: Clip, stations: list[Station], copies: dict[str, ClipCopy]) -> list[Held]:
    """Each station's copy of `clip`: what it reports, or what it answered since."""
    short = clip.sha256[:16]
    out = []
    for st in stations:
        copy = copies.get(st.name)
        reported = st.clips is not None and st.clips.get(clip.id) == short
        # The console's record wins where it is newer than the station's last state.
        newer = copy is not None and (st.state_at is None or copy.updated_at > st.state_at)
        row = Held(st.name, st.village, st.online, "missing", chunks=clip.chunks)
        if copy is not None and copy.state == ClipCopy.State.SENDING:
            row.status, row.acked = "partial", copy.acked
        elif copy is not None and copy.state == ClipCopy.State.DELETING:
            row.status, row.error = "deleting", copy.error
        elif copy is not None and newer and copy.state == ClipCopy.State.COMPLETE:
            row.status = "complete"
        elif copy is not None and newer and copy.state == ClipCopy.State.DELETED:
            row.status = "missing"
        elif reported or (st.clips is None and copy is not None
                          and copy.state == ClipCopy.State.COMPLETE):
            row.status = "complete"
        elif copy is not None and copy.state == ClipCopy.State.FAILED:
            row.status, row.acked, row.error = "failed", copy.acked, copy.error
        if row.status == "complete":
            row.acked = clip.chunks
        out.append(row)
    return out


def library(stations: list[Station]) -> list[tuple[Clip, list[Held]]]:
    """Every clip with each station's copy."""
    clips = list(Clip.objects.defer("data"))
    copies: dict[str, dict[str, ClipCopy]] = {}
    for copy in ClipCopy.objects.filter(clip__in=clips):
        copies.setdefault(copy.clip_id, {})[copy.station_id] = copy
    return [(clip, held(clip, stations, copies.get(clip.id, {}))) for clip in clips]


def holding(clip_id: str, stations: list[Station]) -> set[str]:
    """The stations that hold the clip complete (a broadcast then plays it by id)."""
    clip = Clip.objects.defer("data").filter(pk=clip_id).first()
    if clip is None:
        return set()
    copies = {c.station_id: c for c in ClipCopy.objects.filter(clip=clip)}
    return {h.station for h in held(clip, stations, copies) if h.status == "complete"}
