"""Live voice (喊话, issue 23): an officer holds a button in the browser and speaks; the
stations' loudspeakers say it within a second.

The browser encodes the microphone to Opus itself (WebCodecs `AudioEncoder`, 20 ms
frames; no CDN, no container) and sends each frame as it comes over a WebSocket
(`/voice/ws`, served beside Django by `asgi.CentreApp`): a binary message is the frame's
capture time (Unix ms, float64 big-endian) followed by the Opus packet. WebSocket rather
than short POSTs: one connection opened with the page, no request per 100 ms, nothing
queued behind a slow request. The centre relays every FRAMES_PER_PACKET frames as one
`VoicePacket` (docs/schema/voice.schema.json) over MQTT at QoS 0 (late audio is useless):
once on `…/all/voice` when the officer speaks to every station, else once per chosen
station on its `…/<station>/voice`. Who spoke to whom, when and for how long is audited;
each station's `audio.voice` events (started, underrun, finished, …) are its result.

The messages of the socket, as text (JSON) and binary:
    → {"start": {"target": "all" | "village" | "group" | "station" | "stations",
                 "chosen": [names]}}      ← {"session": id, "stations": [names]}
    → binary: 8-byte capture time + one Opus packet (up to MAX_FRAME bytes)
    → {"end": true}                       ← {"ended": id, "frames": n}
    ← {"error": what the officer reads}
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from pingan_centre import topics
from pingan_centre.console.logs import log

FRAMES_PER_PACKET = 3  # 60 ms of 20 ms frames per MQTT message
MAX_FRAME = 1275  # RFC 6716
MAX_SESSION_S = 600  # a button held for ten minutes is a stuck button
PERMISSION = "console.add_broadcast"
PHASES = ("started", "underrun", "finished", "preempted", "failed")

LABELS = {
    "sent": gettext_lazy("sent, not heard yet"),
    "started": gettext_lazy("speaking"),
    "underrun": gettext_lazy("speaking, with gaps"),
    "finished": gettext_lazy("played"),
    "preempted": gettext_lazy("cut off"),
    "failed": gettext_lazy("playback failed"),
    "offline": gettext_lazy("offline: not heard"),
}

Publish = Callable[[str, bytes], bool]


@dataclass
class Relay:
    """One session: the frames of one press of the button, relayed to its stations."""

    session: str
    by: str
    topics: list[str]
    stations: list[str]
    publish: Publish
    seq: int = 0
    frames: int = 0
    started: float = field(default_factory=time.monotonic)
    _pending: list[bytes] = field(default_factory=list)
    _first_at: float = 0.0

    def frame(self, at_ms: float, opus: bytes) -> None:
        if not self._pending:
            self._first_at = at_ms
        self._pending.append(opus)
        self.frames += 1
        if len(self._pending) >= FRAMES_PER_PACKET:
            self._flush(end=False)

    def end(self) -> None:
        self._flush(end=True)

    def _flush(self, *, end: bool) -> None:
        body = json.dumps({
            "session": self.session, "seq": self.seq,
            "at_ms": max(0, int(self._first_at or time.time() * 1000)),
            "frames": [base64.b64encode(f).decode() for f in self._pending],
            "end": end, "by": self.by[:64]}, separators=(",", ":")).encode()
        self._pending = []
        self.seq += 1
        for topic in self.topics:
            self.publish(topic, body)


def open_session(user: str, target: str, chosen: list[str], township: str,
                 publish: Publish, now: datetime) -> Relay:
    """Resolve the target (as a broadcast's), audit the start; BadBroadcast says why not."""
    from pingan_centre.console.broadcast import BadBroadcast, targets
    from pingan_centre.console.lifecycle import audit

    stored, stations = targets(target, chosen)
    if not stations:
        raise BadBroadcast(_("no stations in that target"))
    names = [s.name for s in stations]
    sid = f"v{uuid.uuid4().hex[:12]}"
    if stored == "all":
        where = [topics.by_name("all_voice").topic(township)]
    else:
        where = [topics.station_topic("voice", township, name) for name in names]
    audit(user, "voice.start", f"voice:{sid}", now, to=stored, stations=names)
    return Relay(sid, user, where, names, publish)


def close_session(relay: Relay, now: datetime) -> None:
    from pingan_centre.console.lifecycle import audit

    audit(relay.by, "voice.end", f"voice:{relay.session}", now, frames=relay.frames,
          seconds=round(time.monotonic() - relay.started, 1))


@dataclass
class StationVoice:
    station: str
    village: str
    result: str
    steps: list[str]
    underruns: int = 0
    lost: int = 0
    dropped_ms: int = 0
    played_s: float = 0.0
    delay_ms_p50: int | None = None
    delay_ms_p95: int | None = None

    @property
    def label(self) -> str:
        return str(LABELS.get(self.result, self.result))


def results(session: str) -> list[StationVoice]:
    """Each station the session spoke to, with what its loudspeaker reported."""
    from pingan_centre.console.models import AuditEntry, Event, Station

    entry = AuditEntry.objects.filter(action="voice.start", target=f"voice:{session}").first()
    if entry is None:
        return []
    names = list(entry.detail.get("stations", []))
    by_name = {s.name: s for s in Station.objects.filter(name__in=names)}
    events: dict[str, list[dict[str, Any]]] = {}
    for ev in Event.objects.filter(type="audio.voice", payload__session=session).order_by(
            "station_id", "seq"):
        events.setdefault(ev.station_id, []).append(ev.payload)
    rows = []
    for name in names:
        st = by_name.get(name)
        got = events.get(name, [])
        steps = [str(p.get("phase", "")) for p in got if p.get("phase") in PHASES]
        last = got[-1] if got else {}
        result = steps[-1] if steps else ("sent" if st is None or st.online else "offline")
        rows.append(StationVoice(
            name, st.village if st else "", result, steps,
            underruns=int(last.get("underruns", 0)), lost=int(last.get("lost", 0)),
            dropped_ms=int(last.get("dropped_ms", 0)),
            played_s=float(last.get("played_s", 0.0)),
            delay_ms_p50=last.get("delay_ms_p50"), delay_ms_p95=last.get("delay_ms_p95")))
    return rows


# --- the WebSocket, served by asgi.CentreApp beside Django ---------------------------

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _user(cookie_header: str) -> tuple[str, str] | None:
    """(username, language) of the session cookie's user if they may speak, else None."""
    from django.conf import settings
    from django.contrib.auth import get_user
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpRequest
    from django.utils import translation

    cookies = SimpleCookie()
    cookies.load(cookie_header)
    morsel = cookies.get(settings.SESSION_COOKIE_NAME)
    if morsel is None:
        return None
    request = HttpRequest()
    request.session = SessionStore(session_key=morsel.value)
    user = get_user(request)
    if not user.is_authenticated or not user.has_perm(PERMISSION):
        return None
    lang_cookie = cookies.get(settings.LANGUAGE_COOKIE_NAME)
    lang = lang_cookie.value if lang_cookie else settings.LANGUAGE_CODE
    return user.get_username(), translation.get_supported_language_variant(lang)


def _same_origin(headers: dict[str, str]) -> bool:
    """A page of another site must not speak with the officer's cookie (a browser sends
    cookies with a cross-site WebSocket): the Origin must be this host."""
    origin = headers.get("origin", "")
    host = headers.get("host", "")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


async def serve(scope: Mapping[str, Any], receive: Receive, send: Send, township: str,
                publish: Publish | None) -> None:
    """One officer's socket, from connect to close; a session per press of the button."""
    from django.db import close_old_connections
    from django.utils import timezone, translation

    message = await receive()
    if message["type"] != "websocket.connect":
        return
    headers = _headers(scope)

    def who() -> tuple[str, str] | None:
        try:
            return _user(headers.get("cookie", ""))
        finally:
            close_old_connections()

    user = await asyncio.to_thread(who) if _same_origin(headers) else None
    if user is None or publish is None:
        log("warning", "voice.refused", why="not logged in with add_broadcast, another site"
            " or no broker link", action="log in as a duty officer on this console's page")
        await send({"type": "websocket.close", "code": 4403})
        return
    username, lang = user
    await send({"type": "websocket.accept"})
    relay: Relay | None = None

    async def reply(**body: Any) -> None:
        await send({"type": "websocket.send", "text": json.dumps(body, ensure_ascii=False)})

    def start(target: str, chosen: list[str]) -> Relay:
        from pingan_centre.console.broadcast import BadBroadcast

        try:
            with translation.override(lang):
                return open_session(username, target, chosen, township, publish,
                                    timezone.now())
        except BadBroadcast:
            raise
        finally:
            close_old_connections()

    def finish(done: Relay) -> None:
        try:
            done.end()
            close_session(done, timezone.now())
        finally:
            close_old_connections()

    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                break
            data = message.get("bytes")
            if data is not None:
                if relay is None or len(data) < 9 or len(data) > 8 + MAX_FRAME:
                    continue  # a frame after the end, or no frame at all
                relay.frame(struct.unpack(">d", data[:8])[0], bytes(data[8:]))
                if time.monotonic() - relay.started > MAX_SESSION_S:
                    await asyncio.to_thread(finish, relay)
                    await reply(ended=relay.session, frames=relay.frames)
                    relay = None
                continue
            try:
                body = json.loads(message.get("text") or "{}")
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            if "start" in body:
                if relay is not None:
                    await asyncio.to_thread(finish, relay)
                spec = body["start"] if isinstance(body["start"], dict) else {}
                chosen = [str(c) for c in spec.get("chosen", []) if isinstance(c, str)]
                from pingan_centre.console.broadcast import BadBroadcast
                try:
                    relay = await asyncio.to_thread(start, str(spec.get("target", "all")),
                                                    chosen[:1000])
                except BadBroadcast as exc:
                    relay = None
                    await reply(error=str(exc))
                    continue
                log("info", "voice.start", session=relay.session, by=username,
                    stations=len(relay.stations))
                await reply(session=relay.session, stations=relay.stations)
            elif body.get("end") and relay is not None:
                done, relay = relay, None
                await asyncio.to_thread(finish, done)
                log("info", "voice.end", session=done.session, frames=done.frames)
                await reply(ended=done.session, frames=done.frames)
    finally:
        if relay is not None:  # the page closed while speaking
            await asyncio.to_thread(finish, relay)
