"""Many light stations in one process: the unit's uplink as the township's broker sees it.

A `LightStation` is what a unit is to the broker and the console, without the unit: its
own certificate (CN = `<township>/<station>`), MQTT v5 over TLS, a persistent session
(clean_start=False, session expiry as `uplink.session_expiry_s`), the Last Will and the
retained state on `…/state`, subscriptions to its own and its township's commands, QoS 1
publishes of events shaped by `edge.contract.events` on `edge.contract.topics`, alarms
first, a row leaving the outbox only on a successful PUBACK, and the unit's jittered
back-off (`edge.link.uplink.Backoff`) between connection attempts. It keeps no files:
its outbox is a list that survives a simulated power cut, as the unit's survives a real
one.

It answers the township's commands as a unit does, without a loudspeaker: each payload
validated by the unit's own `edge.contract.commands.parse` (a bad one refused with the
unit's code), each id acted on once, a `cmd.result` for each; a `broadcast.play` is
refused when expired, else accepted with the unit's result detail and sounded for
`play_s` seconds (`audio.playback` started, then finished; one at a time, the next
waiting its turn), and `broadcast.stop` stops it (`stopped`). Other commands are
answered as accepted and not acted on.

A `Fleet` runs thousands of them on a few threads (`Worker`: paho's external-loop API
over one `selectors` loop each), so a 2-core machine can host a county's stations beside
the broker and the console. `tally` is the bench's accounting: what the stations
committed against what the console stored.

A power cut (`LightStation.power_cut`) drops the paho client without a word: `silent`
keeps its socket open and mute, as a unit that lost power leaves a half-open TCP
connection that the broker only notices after 1.5 × keepalive; otherwise the socket is
closed (the broker sees it at once).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import queue
import random
import selectors
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.clock import now_iso
from edge.contract import commands
from edge.contract.events import (
    AlarmPanic,
    AudioPayload,
    AudioPlayback,
    ButtonBroadcast,
    ButtonPayload,
    CmdResult,
    CmdResultPayload,
    ErrorInfo,
    EventBase,
    PanicPayload,
    StationState,
    Status,
    StatusPayload,
    Text,
)
from edge.contract.topics import Topics
from edge.link.uplink import Backoff
from edge.unit.bundle import install_bundle
from pingan_centre.broker import provision
from pingan_centre.broker.provision import Township

VERSION = "light-station"
# What a unit's [uplink] and [broker] sections default to (edge/config.py).
KEEPALIVE_S = 30
INFLIGHT = 20
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 60.0
SESSION_EXPIRY_S = 86400
# A CONNECT that has no CONNACK by then is given up and tried again after the back-off.
CONNACK_TIMEOUT_S = 10.0
# The unit's uplink.max_command_bytes default.
MAX_COMMAND_BYTES = 16384
# How long a light station's loudspeaker "sounds" a broadcast (it renders nothing).
PLAY_S = 2.0


@dataclass(frozen=True, slots=True)
class Identity:
    """A station's certificate files, as `pingan-edge install-bundle` leaves them."""

    station: str
    township: str
    ca: Path
    cert: Path
    key: Path


@dataclass(slots=True)
class Pending:
    """One committed event not yet acknowledged by the broker."""

    id: str
    seq: int
    priority: int
    topic: str
    body: bytes
    made: float  # time.time() when the station committed it (a press: the press)
    sent: float = 0.0  # time.time() when first handed to paho (written, unless in a callback)


@dataclass(slots=True)
class Counters:
    connects: int = 0  # CONNACK success
    attempts: int = 0  # CONNECT tried (TLS handshake started)
    failures: int = 0  # attempts that never reached a CONNACK success
    refused_publishes: int = 0  # PUBACK reason >= 0x80
    sent: int = 0  # PUBLISH handed to paho (resends included)
    commands: int = 0  # township commands answered (duplicates not counted)


class LightStation:
    """One station; every method but `commit` runs on its worker's thread."""

    def __init__(self, ident: Identity, host: str, port: int, *,
                 keepalive_s: int = KEEPALIVE_S, inflight: int = INFLIGHT,
                 backoff: tuple[float, float] = (BACKOFF_MIN_S, BACKOFF_MAX_S),
                 session_expiry_s: int = SESSION_EXPIRY_S, play_s: float = PLAY_S,
                 rng: random.Random | None = None) -> None:
        self.ident = ident
        self.topics = Topics(ident.township, ident.station)
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.inflight = inflight
        self.session_expiry_s = session_expiry_s
        self.backoff = Backoff(backoff[0], backoff[1], rng)
        self.counters = Counters()
        self.powered = False
        self.online = False  # CONNACK success on the current client
        self.online_since = 0.0  # time.monotonic() of the last CONNACK success
        self.seq = 0
        # The outbox, by (priority, seq): alarms first, as the unit drains it.
        self.pending: dict[str, Pending] = {}
        self.committed: dict[str, tuple[str, int]] = {}  # every id → (station, seq)
        self._lock = threading.Lock()  # commit() may come from another thread
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, str] = {}  # paho mid → event id
        self._sent_on: set[str] = set()  # ids handed to the current client
        self._ctx: ssl.SSLContext | None = None
        self._attempt_started = 0.0
        self.worker: Worker | None = None
        self.play_s = play_s
        self._seen = commands.SeenCommands()
        self._free_at = 0.0  # time.monotonic() when the loudspeaker is free again
        self._plays: dict[str, Any] = {}  # play id → its `finished` timer's cancel flag

    # --- what the unit does while it runs (any thread) --------------------------------

    def commit(self, event: EventBase, made: float | None = None) -> Pending:
        """The outbox commits an event: it gets the next seq and waits for a PUBACK."""
        with self._lock:
            self.seq += 1
            event.seq = self.seq
            row = Pending(event.id, self.seq, event.priority,
                          self.topics.for_type(str(event.__struct_config__.tag)),
                          msgspec.json.encode(event), made or time.time())
            self.pending[row.id] = row
            self.committed[row.id] = (self.ident.station, row.seq)
        return row

    def commit_kind(self, kind: str, made: float | None = None) -> Pending:
        return self.commit(make_event(kind, self.ident), made)

    # --- the worker's side ------------------------------------------------------------

    def power_cut(self, silent: bool) -> mqtt.Client | None:
        """The unit loses power: no DISCONNECT, no Will cleared. Returns the abandoned
        client when `silent` (its socket must stay open and unread: keep it)."""
        self.powered = False
        self.online = False
        client, self._client = self._client, None
        self._inflight.clear()
        self._sent_on.clear()
        if client is None:
            return None
        sock = client.socket()
        if sock is not None and self.worker is not None:
            self.worker.forget(sock)
        if silent:
            return client
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.close()  # a FIN, no DISCONNECT: the broker publishes the Will now
        return None

    def power_on(self) -> None:
        """The unit boots: a new process, a new paho client, the same outbox."""
        self.powered = True
        self.backoff.reset()
        self.connect()

    def connect(self) -> None:
        if not self.powered:
            return
        assert self.worker is not None
        self._drop_client()
        self.counters.attempts += 1
        self._attempt_started = time.monotonic()
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"{self.ident.township}/{self.ident.station}",
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(self.inflight)
        client.max_queued_messages_set(0)
        if self._ctx is None:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ident.ca))
            ctx.load_cert_chain(str(self.ident.cert), str(self.ident.key))
            self._ctx = ctx
        client.tls_set_context(self._ctx)
        will = StationState(station=self.ident.station, township=self.ident.township,
                            online=False, version=VERSION, ts=None, clock_synced=True)
        client.will_set(self.topics.state, msgspec.json.encode(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        self._client = client
        try:
            # Blocking: TCP connect and the TLS handshake, then CONNECT is queued.
            client.connect(self.host, self.port, self.keepalive_s, clean_start=False,
                           properties=props)
        except (OSError, ssl.SSLError):
            self._failed()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self.online = False
        self._inflight.clear()
        self._sent_on.clear()
        if client is not None:
            sock = client.socket()
            if sock is not None and self.worker is not None:
                self.worker.forget(sock)
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.close()

    def _failed(self) -> None:
        self.counters.failures += 1
        self._drop_client()
        if self.powered and self.worker is not None:
            self.worker.later(self.backoff.next(), self.connect)

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        if self.worker is not None:
            self.worker.watch(sock, self)

    def _on_socket_close(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        if self.worker is not None:
            self.worker.forget(sock)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                    _p: Any) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            self._failed()
            return
        self.counters.connects += 1
        self.online = True
        self.online_since = time.monotonic()
        self.backoff.reset()
        self._state()
        client.subscribe([(self.topics.cmd, 1), (self.topics.all_cmd, 1)])
        self.drain()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _r: Any,
                       _p: Any) -> None:
        if client is not self._client:
            return
        if self.online:
            self.online = False
        else:
            self.counters.failures += 1
        self._inflight.clear()
        self._sent_on.clear()
        self._client = None
        if self.powered and self.worker is not None:
            self.worker.later(self.backoff.next(), self.connect)

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Any) -> None:
        if client is not self._client:
            return
        event_id = self._inflight.pop(mid, None)
        if reason.is_failure:  # an event, or the retained state
            # Kept, as the unit keeps a refused row (publish_refused); not resent here.
            self.counters.refused_publishes += 1
            self.drain()
            return
        if event_id is None:
            return
        with self._lock:
            self.pending.pop(event_id, None)
        self.drain()

    def _state(self) -> None:
        """The retained state, online, as the unit publishes it (not through the outbox)."""
        if self._client is None:
            return
        state = StationState(station=self.ident.station, township=self.ident.township,
                             online=True, version=VERSION, ts=now_iso(), clock_synced=True,
                             pending=len(self.pending))
        self._client.publish(self.topics.state, msgspec.json.encode(state), qos=1,
                             retain=True)

    # --- the township's commands (on the worker's thread) ----------------------------

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if client is not self._client:
            return
        self.answer(bytes(msg.payload))

    def answer(self, payload: bytes) -> None:
        """What the unit's command worker does with one payload, minus the parts."""
        try:
            cmd = commands.parse(payload, MAX_COMMAND_BYTES)
        except commands.CommandRejected as exc:
            self._result(exc.cmd_id, exc.cmd, error=exc.error)
            return
        if not self._seen.first_time(cmd.id):
            return  # QoS 1 delivered it again: acted on once
        self.counters.commands += 1
        name = commands.tag(cmd)
        if isinstance(cmd, commands.BroadcastPlay):
            self._play(cmd)
        elif isinstance(cmd, commands.BroadcastStop):
            stopped = [pid for pid, flag in list(self._plays.items())
                       if cmd.broadcast_id is None or pid == cmd.broadcast_id]
            plays = [self._plays.pop(pid) for pid in stopped]
            self._result(cmd.id, name, detail={"stopped": stopped})
            for pid, play in zip(stopped, plays, strict=True):
                play["stopped"] = True
                self._audio("stopped", pid, play["level"], play["sound"])
        elif isinstance(cmd, commands.StateGet):
            self._result(cmd.id, name)
            self._state()
        else:
            self._result(cmd.id, name)
        self.drain()

    def _play(self, cmd: commands.BroadcastPlay) -> None:
        now = dt.datetime.now(dt.UTC)
        if cmd.expires is not None and cmd.expires <= now:
            self._result(cmd.id, "broadcast.play", error=ErrorInfo(code="expired", message=Text(
                zh=f"广播已于 {cmd.expires.isoformat()} 过期，未播放",
                en=f"broadcast expired at {cmd.expires.isoformat()}; not played")))
            return
        sound = (f"clip:{cmd.clip}" if cmd.clip is not None else "text"
                 if cmd.text is not None else f"tone:{cmd.tone}")
        level = "emergency" if cmd.priority == "emergency" else "normal"
        mono = time.monotonic()
        start = max(mono, self._free_at)
        if cmd.not_before is not None:
            start = max(start, mono + (cmd.not_before - now).total_seconds())
        duration = self.play_s * cmd.repeat
        self._free_at = start + duration
        playing = next(iter(self._plays), None)
        flag: dict[str, Any] = {"stopped": False, "level": level, "sound": sound}
        self._plays[cmd.id] = flag
        self._result(cmd.id, "broadcast.play", detail={
            "play_id": cmd.id, "plays_as": level, "sound": sound,
            "duration_s": round(duration, 3), "playing_now": playing})
        worker = self.worker
        assert worker is not None

        def started() -> None:
            if not flag["stopped"]:
                self._audio("started", cmd.id, level, sound)
                self.drain()

        def finished() -> None:
            if not flag["stopped"]:
                self._plays.pop(cmd.id, None)
                self._audio("finished", cmd.id, level, sound, duration)
                self.drain()

        worker.later(start - mono, started)
        worker.later(start + duration - mono, finished)

    def _result(self, cmd_id: str | None, cmd: str | None, *, error: ErrorInfo | None = None,
                detail: dict[str, Any] | None = None) -> None:
        self.commit(CmdResult(**_common(self.ident), payload=CmdResultPayload(
            cmd_id=cmd_id, cmd=cmd, ok=error is None, error=error, detail=detail or {})))

    def _audio(self, phase: str, play_id: str, level: str, sound: str,
               played_s: float = 0.0) -> None:
        self.commit(AudioPlayback(**_common(self.ident), payload=AudioPayload(
            phase=phase, play_id=play_id, origin="township",  # type: ignore[arg-type]
            level=level, sound=sound, cmd_id=play_id,  # type: ignore[arg-type]
            played_s=round(played_s, 3))))

    def drain(self) -> None:
        """Fill the in-flight window from the outbox, alarms first, as the unit does: a
        press waits for at most one PUBACK, never behind the station's whole backlog.
        Rows handed to this client are not handed again (paho resends its own)."""
        client = self._client
        if client is None or not self.online:
            return
        room = self.inflight - len(self._inflight)
        if room <= 0:
            return
        with self._lock:
            rows = sorted((r for r in self.pending.values() if r.id not in self._sent_on),
                          key=lambda r: (r.priority, r.seq))[:room]
        for row in rows:
            info = client.publish(row.topic, row.body, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._sent_on.add(row.id)
            row.sent = row.sent or time.time()
            self._inflight[info.mid] = row.id
            self.counters.sent += 1

    def tick(self, now: float) -> None:
        """Keep-alive, and a CONNECT left unanswered."""
        client = self._client
        if client is None:
            return
        if not self.online and now - self._attempt_started > CONNACK_TIMEOUT_S:
            self._failed()
            return
        client.loop_misc()

    @property
    def client(self) -> mqtt.Client | None:
        return self._client


def _common(ident: Identity) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "station": ident.station, "township": ident.township,
            "ts": now_iso(), "clock_synced": True}


def make_event(kind: str, ident: Identity) -> EventBase:
    """An event of the published shapes, as the unit makes it (seq set at commit)."""
    common = _common(ident)
    if kind == "alarm.panic":
        return AlarmPanic(**common, payload=PanicPayload(source="simulator", held_s=0.1))
    if kind == "button.broadcast":
        return ButtonBroadcast(**common, payload=ButtonPayload(
            button="broadcast", source="simulator", held_s=0.2))
    if kind == "status":
        return Status(**common, payload=StatusPayload(
            code="power_restored", level="info",
            message=Text(zh="站点断电后恢复", en="power came back after a cut")))
    raise ValueError(f"no light-station event of type {kind!r}")


class Worker(threading.Thread):
    """One thread's share of the stations: a selectors loop over paho's sockets, timers
    (back-off, scheduled power), and calls handed in from other threads (`call`)."""

    def __init__(self, name: str, tick_s: float = 0.02) -> None:
        super().__init__(name=name, daemon=True)
        self.stations: list[LightStation] = []
        self.sel = selectors.DefaultSelector()
        self.tick_s = tick_s
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._halt = threading.Event()
        self.corpses: list[mqtt.Client] = []  # silently cut clients, sockets kept open
        self.errors: list[str] = []

    def add(self, st: LightStation) -> None:
        st.worker = self
        self.stations.append(st)

    def call(self, fn: Callable[[], None]) -> None:
        self._calls.put(fn)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._order), fn))

    def watch(self, sock: Any, st: LightStation) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        self.sel.register(sock, selectors.EVENT_READ, st)

    def forget(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.sel.unregister(sock)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        last_misc = 0.0
        while not self._halt.is_set():
            try:
                while True:
                    try:
                        self._calls.get_nowait()()
                    except queue.Empty:
                        break
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    heapq.heappop(self._timers)[2]()
                for st in self.stations:
                    client = st.client
                    if client is not None and client.want_write():
                        client.loop_write()
                wait = self.tick_s
                if self._timers:
                    wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
                if self.sel.get_map():
                    ready = self.sel.select(wait)
                else:
                    time.sleep(wait)
                    ready = []
                for key, _mask in ready:
                    st = key.data
                    client = st.client
                    if client is not None and client.socket() is key.fileobj:
                        client.loop_read()
                    else:
                        self.forget(key.fileobj)
                now = time.monotonic()
                if now - last_misc >= 1.0:
                    last_misc = now
                    for st in self.stations:
                        st.tick(now)
            except Exception as exc:  # one station's bug must not stop its neighbours
                self.errors.append(repr(exc))
        for st in self.stations:
            st.power_cut(silent=False)
        for client in self.corpses:
            sock = client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.close()
        self.sel.close()


@dataclass
class Fleet:
    """Stations spread over `workers` threads."""

    stations: list[LightStation]
    workers: list[Worker] = field(default_factory=list)

    @classmethod
    def of(cls, idents: Iterable[Identity], host: str, port: int, *, workers: int = 8,
           seed: int = 1, **station_args: Any) -> Fleet:
        rng = random.Random(seed)
        stations = [LightStation(i, host, port, rng=random.Random(rng.random()),
                                 **station_args) for i in idents]
        pool = [Worker(f"fleet-{n}") for n in range(max(1, min(workers, len(stations))))]
        for n, st in enumerate(stations):
            pool[n % len(pool)].add(st)
        return cls(stations, pool)

    def start(self) -> Fleet:
        for w in self.workers:
            w.start()
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for w in self.workers:
            w.join(30)

    def on(self, st: LightStation, delay: float = 0.0) -> None:
        """Power `st` on after `delay` seconds."""
        w = st.worker
        assert w is not None
        w.call(lambda: w.later(delay, st.power_on))

    def cut(self, st: LightStation, silent: bool) -> None:
        w = st.worker
        assert w is not None

        def cut() -> None:
            corpse = st.power_cut(silent)
            if corpse is not None:
                w.corpses.append(corpse)
        w.call(cut)

    def press(self, st: LightStation) -> Pending:
        """A panic press: committed now (this thread), published at the next turn of the
        station's worker, ahead of the station's older rows."""
        row = st.commit_kind("alarm.panic")
        w = st.worker
        assert w is not None
        w.call(st.drain)
        return row

    def online(self) -> int:
        return sum(1 for st in self.stations if st.online)

    def pending(self) -> int:
        return sum(len(st.pending) for st in self.stations)

    def committed(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for st in self.stations:
            out.update(st.committed)
        return out

    def errors(self) -> list[str]:
        return [e for w in self.workers for e in w.errors]

    def totals(self) -> Counters:
        total = Counters()
        for st in self.stations:
            for name in Counters.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(st.counters, name))
        return total


@dataclass(frozen=True, slots=True)
class Tally:
    """What the stations committed against what the console stored."""

    committed: int
    stored: int
    lost: list[str]  # committed ids the console does not have
    twice: list[tuple[str, int]]  # (station, seq) stored more than once
    unknown: list[str]  # stored ids no station committed

    @property
    def ok(self) -> bool:
        return not (self.lost or self.twice or self.unknown)


def tally(committed: dict[str, tuple[str, int]],
          stored: Iterable[tuple[str, str, int]]) -> Tally:
    """`stored` rows are (id, station, seq) as the console keeps them. An event counts as
    stored twice when its id, or its station and seq, appear in more than one row."""
    rows = list(stored)
    by_key: dict[tuple[str, int], int] = {}
    ids: dict[str, int] = {}
    for event_id, station, seq in rows:
        ids[event_id] = ids.get(event_id, 0) + 1
        by_key[(station, seq)] = by_key.get((station, seq), 0) + 1
    twice = sorted({k for k, n in by_key.items() if n > 1}
                   | {committed[i] for i, n in ids.items() if n > 1 and i in committed})
    return Tally(committed=len(committed), stored=len(rows),
                 lost=sorted(i for i in committed if i not in ids),
                 twice=twice, unknown=sorted(i for i in ids if i not in committed))


def identities(town: Township, names: Iterable[str], units: Path,
               host: str = "127.0.0.1") -> list[Identity]:
    """Each station's certificate, issued by the township CA as `pingan-centre broker
    add-station` issues it and unpacked as `pingan-edge install-bundle` unpacks it. A
    station whose unit files exist under `units` keeps them, so a cache of a thousand
    is made once. Issuing costs little CPU (EC P-256, `cryptography`) but two fsyncs
    each: new stations are issued on a few threads so the disk waits overlap."""
    township = town.township_id()
    out: list[Identity] = []
    fresh: list[str] = []
    for name in names:
        d = units / name
        ident = Identity(name, township, d / "ca.crt", d / "station.crt", d / "station.key")
        out.append(ident)
        if all(f.exists() for f in (ident.ca, ident.cert, ident.key)):
            continue
        if town.issued(name).exists():  # issued, never unpacked: revoke and issue again
            install_bundle(provision.add_station(town, name, host, replace=True), d)
        else:
            fresh.append(name)

    def issue(name: str) -> None:
        install_bundle(provision.add_station(town, name, host), units / name)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(issue, fresh))
    return out
