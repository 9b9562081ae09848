"""The MQTT uplink: drains the outbox to the township broker and receives commands.

Two named threads: `uplink-net` connects (capped exponential back-off with full jitter)
and runs paho's network loop; `uplink-pump` hands pending outbox rows to paho, at most
`inflight` unacknowledged at a time, by priority then sequence. A row is marked
delivered only when its PUBACK arrives with a success reason code.

paho keeps un-acknowledged QoS 1 messages across reconnects and resends them itself, so
within one process each row is handed over once (tracked by a per-priority cursor);
after a restart every undelivered row is sent again. The township de-duplicates by id.

A row the broker refuses (MQTT v5 PUBACK reason ≥ 0x80, e.g. 135 Not authorized by its
ACL) is logged as an error, shown on the state topic, and sent again after the next
reconnect or `backoff_max_s`, whichever comes first; after `MAX_REFUSALS` refusals it
is parked in the outbox (kept, never dropped, resent after a restart). Other rows keep
flowing meanwhile. MQTT v3.1.1 brokers acknowledge a refused publish as a success, so
the uplink speaks only v5.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge import __version__
from edge.clock import clock_synced, now_iso
from edge.config import Config
from edge.contract import commands
from edge.contract.events import StationState, encode
from edge.contract.topics import Topics
from edge.health import Health
from edge.link import tlscheck
from edge.link.dispatch import Handlers
from edge.link.handover import Handover
from edge.logs import log
from edge.store.outbox import Outbox, Stored

logger = logging.getLogger("edge.uplink")



@dataclass(frozen=True, slots=True)
class _Latest:
    """Marks a state or health publish (not from the outbox) in the in-flight table."""

    topic: str

MAX_REFUSALS = 3
# A commit of at most this many rows is handed to paho by the outbox writer itself.
DIRECT_MAX = 4
# A broker that closes a TLS link this soon, before any CONNACK, refused our certificate.
_TLS_REFUSED_WITHIN_S = 5.0
# No route yet (at boot, the link not up; a 4G modem still registering): the broker never
# saw the attempt, so trying again costs it nothing. Tried again this often, without
# growing the back-off, so the first connect follows the link within seconds, not after a
# back-off grown while nothing could have worked. Logged once a minute at most meanwhile.
NO_ROUTE_RETRY_S = 2.0
_NO_ROUTE_LOG_S = 60.0


def no_route(exc: BaseException) -> bool:
    """The local network has no way out yet: no route, or a resolver that cannot be
    reached (EAI_AGAIN). Not a refusal, a timeout or an unknown name: those back off."""
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN
    return isinstance(exc, OSError) and exc.errno == errno.ENETUNREACH


class Backoff:
    """Capped exponential back-off with jitter: uniform(base, min(cap, base·2ⁿ)).

    Jitter keeps a township's stations from reconnecting in lock-step after an outage."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap, self._n = base, cap, 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self._n, 32)))
        self._n += 1
        return self._rng.uniform(self.base, max(self.base, ceiling))

    def reset(self) -> None:
        self._n = 0


# Called on the publishing thread with the topic just before each publish to paho; what it
# raises is what a failing socket raises (tests and benches: who publishes, faults).
PublishHook = Callable[[str], None]


class Uplink:
    def __init__(
        self,
        config: Config,
        outbox: Outbox,
        health: Health,
        *,
        on_command: Callable[[str, bytes], None],
        on_delivered: Callable[[Stored], None],
        close_s: float = 0.5,
        before_publish: PublishHook | None = None,
        clips: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._config = config
        # The clip library's inventory for the state (the loudspeaker's, when there is one).
        self.clips = clips
        self._close_s = close_s
        self._outbox = outbox
        self._health = health
        self._on_command = on_command
        self._on_delivered = on_delivered
        self._before_publish = before_publish
        self.topics = Topics(config.station.township, config.station.id)
        self._window = config.uplink.inflight
        self._backoff = Backoff(config.uplink.backoff_min_s, config.uplink.backoff_max_s)
        self._no_route_logged = -_NO_ROUTE_LOG_S  # when a no-route failure was last logged

        self._lock = threading.Lock()
        # paho's I/O is not thread-safe when the application runs the loop itself: the
        # network thread and a publisher writing at once can reorder packets on the wire.
        # Every call that reads or writes the socket holds this lock.
        self._io = threading.RLock()
        self._wake = threading.Condition(self._lock)
        # _fresh: rows were committed since the pump last looked (wake for any free slot);
        # _backlog: the pump's last page was full (wake once half the window is free, so
        # a drain refills in pages rather than one query per PUBACK).
        self._fresh = True
        self._backlog = False
        # Whether the outbox writer may hand its commit to paho itself (edge/link/handover.py).
        self._handover = Handover()
        self._state_due = True
        self._connected = False
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._inflight: dict[int, Stored | _Latest] = {}
        self._early: dict[int, ReasonCode] = {}
        self._cursor: dict[int, int] = {}
        self._retry: list[Stored] = []
        self._rejected: list[Stored] = []
        self._rejected_due: float | None = None  # monotonic time to resend _rejected
        self._refusals: dict[int, int] = {}  # seq → refusals so far
        self._refused_topics: dict[str, str] = {}  # topic → the broker's last refusal
        self._parked: list[str] = []  # the type of each row parked by this process
        self._accepted = False  # a CONNACK arrived since the last connect attempt
        self.connects = 0  # accepted connections since start (health: reconnects)
        self._tls_ready = False

        self._client = self._make_client()
        self._net = threading.Thread(target=self._run_net, name="uplink-net", daemon=True)
        self._pump = threading.Thread(target=self._run_pump, name="uplink-pump", daemon=True)
        health.subscribe(self.request_state)

    # --- public ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def alive(self) -> bool:
        return self._net.is_alive() and self._pump.is_alive()

    def start(self) -> None:
        self._net.start()
        self._pump.start()

    def notify(self, rows: list[Stored] | None = None) -> None:
        """New rows were committed (called from the outbox writer, after the commit).

        When nothing older waits and the link is idle, a few rows (an alarm) are handed to
        paho right here: no other thread has to wake, and no query runs, between the
        fsync and the socket. Otherwise, or if the socket is busy, the pump takes them."""
        if rows and len(rows) <= DIRECT_MAX:
            try:
                if self._send_direct(rows):
                    return
            except Exception:  # whatever it was, the pump (from the database) sends them
                logger.exception("uplink.direct_send_failed", extra={"fields": {
                    "action": "none: the events are sent by the pump; report this log line"}})
        with self._wake:
            self._fresh = True
            self._handover.fell_behind()
            self._wake.notify()

    def _send_direct(self, rows: list[Stored]) -> bool:
        """True if the writer handed all of `rows` to paho; False leaves them to the pump
        (those not handed over are still past its cursor)."""
        with self._wake:
            if not (self._connected and not self._retry
                    and len(rows) <= self._window - len(self._inflight)
                    and self._handover.writer_may_send()):
                return False
            rows = [r for r in rows if r.seq > self._cursor.get(r.priority, 0)]
        sent = False
        try:
            # Never wait for the socket here: the network thread may be in a handshake.
            # (Held across the rows; _publish takes the re-entrant lock again.)
            if self._io.acquire(blocking=False):
                try:
                    sent = self._hand_over(rows)
                finally:
                    self._io.release()
            return sent
        finally:
            with self._wake:
                self._handover.writer_done(sent)
                if self._fresh or self._ready():
                    self._wake.notify()

    def request_state(self) -> None:
        with self._wake:
            self._state_due = True
            self._wake.notify()

    def publish_volatile(self, stored: Stored) -> None:
        """Last resort when the outbox cannot store an alarm: send it from memory."""
        info = self._publish(self.topics.for_type(stored.type), stored.body)
        self._track(info.mid, stored)

    def publish_retained(self, topic: str, body: bytes) -> bool:
        """Latest-value telemetry (health): sent only while connected, never stored."""
        if not self._connected:
            return False
        info = self._publish(topic, body, retain=True)
        self._track(info.mid, _Latest(topic))
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _publish(self, topic: str, body: bytes, retain: bool = False) -> mqtt.MQTTMessageInfo:
        # Not from the network thread's callbacks: those already hold self._io.
        with self._io:
            if self._before_publish is not None:
                self._before_publish(topic)
            return self._client.publish(topic, body, qos=1, retain=retain)

    def register(self, handlers: Handlers) -> None:
        handlers.register(commands.StateGet, self._state_get)

    def _state_get(self, _cmd: commands.StateGet) -> dict[str, Any]:
        self.request_state()
        return {}

    def close(self) -> None:
        """Say offline (retained) and disconnect cleanly, within `close_s`; un-acked rows
        stay in the outbox. Safe twice, and before start()."""
        if self._stopping.is_set():
            return
        deadline = time.monotonic() + self._close_s
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._pump.is_alive():
            self._pump.join(max(0.0, deadline - time.monotonic()))
        if self._connected:
            info = self._publish(self.topics.state, self._state_payload(False), retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.05, (deadline - time.monotonic()) / 2))
        self._closing.set()
        # A TLS handshake in progress holds the lock: do not wait past the deadline for it.
        if self._io.acquire(timeout=max(0.05, deadline - time.monotonic())):
            try:
                self._client.disconnect()
            finally:
                self._io.release()
        if self._net.is_alive():
            self._net.join(max(0.05, deadline - time.monotonic()))

    # --- paho client -----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self._config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.station.id,
                             protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(self._window)
        client.will_set(self.topics.state, self._state_payload(False, will=True), qos=1,
                        retain=True)
        if cfg.broker.username:
            client.username_pw_set(cfg.broker.username, cfg.password())
        if cfg.broker.tls:
            self._setup_tls(client)
        client.on_socket_open = set_no_delay
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _setup_tls(self, client: mqtt.Client) -> None:
        """Load the bundle's files; if they are missing or bad, say so and try again at the
        next connect attempt (a technician may be copying them in)."""
        broker = self._config.broker
        try:
            client.tls_set(ca_certs=broker.ca_file or None, certfile=broker.cert_file or None,
                           keyfile=broker.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ValueError) as exc:
            self._tls_failed(exc)
            return
        self._tls_ready = True

    def _tls_failed(self, error: BaseException | None) -> None:
        problem = tlscheck.diagnose(self._config.broker, error, synced=clock_synced(),
                                    now=dt.datetime.now(dt.UTC))
        log(logger, "error", "uplink.tls_failed", error=str(error) if error else
            "closed by the broker during the handshake", problem=problem.en,
            action=problem.action)
        self._health.set("uplink_tls", problem.zh, problem.en, action=problem.action)

    def _check_certificate(self) -> None:
        """Problems the township should see while the link still works."""
        broker = self._config.broker
        checks = {"cert_expiring": tlscheck.expiring(broker, now=dt.datetime.now(dt.UTC)),
                  "cert_mismatch": tlscheck.mismatch(broker, self._config.station.township,
                                                     self._config.station.id)}
        for code, found in checks.items():
            if found:
                self._health.set(code, found.zh, found.en, action=found.action)
            else:
                self._health.clear(code)

    def _state_payload(self, online: bool, *, will: bool = False) -> bytes:
        return encode(StationState(
            station=self._config.station.id, township=self._config.station.township,
            online=online, version=__version__, ts=None if will else now_iso(),
            clock_synced=clock_synced(),
            pending=self._outbox.pending_count() if online else None,
            problems=self._health.problems() if online else [],
            counters=self._health.counts() if online else {},
            name=self._config.station.name[:100],
            clips=self.clips() if online and self.clips is not None else None,
            schedules=self._health.schedules() if online else None,
        ))

    def _run_net(self) -> None:
        broker = self._config.broker
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._config.uplink.session_expiry_s
        first = True
        while not self._closing.is_set():
            if broker.tls and not self._tls_ready:
                self._setup_tls(self._client)
                if not self._tls_ready:
                    self._connect_failed("TLS files unusable")
                    continue
            self._accepted = False
            attempt = time.monotonic()
            try:
                with self._io:
                    if first:
                        # clean_start=False: commands queued while the link was down arrive.
                        self._client.connect(broker.host, broker.port, broker.keepalive_s,
                                             clean_start=False, properties=props)
                        first = False
                    else:
                        self._client.reconnect()
            except (OSError, ssl.SSLError) as exc:
                if isinstance(exc, ssl.SSLError):
                    self._tls_failed(exc)
                self._connect_failed(str(exc), unroutable=no_route(exc))
                continue
            while not self._closing.is_set():
                with self._io:
                    rc = self._client.loop(timeout=0.0)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._await_io(1.0)
            if not self._closing.is_set():
                if (broker.tls and not self._accepted
                        and time.monotonic() - attempt < _TLS_REFUSED_WITHIN_S):
                    self._tls_failed(None)
                self._connect_failed("connection lost")

    def _await_io(self, timeout: float) -> None:
        """Sleep until the socket has something to read (or write), outside self._io, so
        the pump can publish meanwhile."""
        sock = self._client.socket()
        if sock is None:
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select would not see them
        want_write = [sock] if self._client.want_write() else []
        with contextlib.suppress(OSError, ValueError):
            select.select([sock], want_write, [], timeout)

    def _connect_failed(self, why: str, *, unroutable: bool = False) -> None:
        now = time.monotonic()
        if unroutable:
            delay = NO_ROUTE_RETRY_S
            quiet = now - self._no_route_logged < _NO_ROUTE_LOG_S
            if not quiet:
                self._no_route_logged = now
        else:
            delay, quiet = self._backoff.next(), False
            self._no_route_logged = -_NO_ROUTE_LOG_S
        broker = self._config.broker
        if not quiet:
            log(logger, "warning", "uplink.connect_failed", host=broker.host,
                port=broker.port, error=why, retry_in_s=round(delay, 2),
                action="check the 4G/line link and the broker address; events are kept "
                       "meanwhile")
        self._health.set("uplink_down", f"无法连接乡镇平台：{why}",
                         f"cannot reach the township broker: {why}")
        self._closing.wait(delay)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: ReasonCode,
                    _p: Properties | None) -> None:
        if reason.is_failure:
            log(logger, "error", "uplink.refused", reason=str(reason),
                action="check the station's broker credentials / certificate")
            self._health.set("uplink_refused", f"乡镇平台拒绝连接：{reason}",
                             f"township broker refused the connection: {reason}")
            return
        self._accepted = True
        self.connects += 1
        self._backoff.reset()
        self._health.clear("uplink_tls")
        self._check_certificate()
        self._health.clear("uplink_down")
        self._health.clear("uplink_refused")
        client.subscribe(self.topics.subscriptions())
        with self._wake:
            # Once per connect, by the pump, first in its next round; the health changes
            # just above asked for it too and coalesce into this one.
            self._state_due = True
            self._retry.extend(self._rejected)
            self._rejected.clear()
            self._rejected_due = None
            self._connected = True
            self._fresh = True
            self._wake.notify()
        log(logger, "info", "uplink.connected", host=self._config.broker.host,
            port=self._config.broker.port, session_present=bool(flags.session_present))

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode,
                       _p: Properties | None) -> None:
        with self._wake:
            self._connected = False
            self._handover.fell_behind()
        if not self._closing.is_set():
            log(logger, "warning", "uplink.disconnected", reason=str(reason),
                action="reconnecting with back-off; events are kept in the outbox")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_command(msg.topic, bytes(msg.payload))
        except Exception:  # a bad command must never take the network thread down
            logger.exception("command.handler_failed", extra={"fields": {"topic": msg.topic}})

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        with self._wake:
            entry = self._inflight.pop(mid, None)
            if entry is None:
                self._early[mid] = reason  # PUBACK beat publish() returning: see _track
                return
            if self._ready():
                self._wake.notify()
        self._acked(entry, reason)

    def _track(self, mid: int, entry: Stored | _Latest) -> None:
        with self._wake:
            reason = self._early.pop(mid, None)
            if reason is None:
                self._inflight[mid] = entry
                return
        self._acked(entry, reason)

    def _acked(self, entry: Stored | _Latest, reason: ReasonCode) -> None:
        topic = entry.topic if isinstance(entry, _Latest) else self.topics.for_type(entry.type)
        self._topic_refused(topic, reason, logged=isinstance(entry, Stored))
        if not isinstance(entry, Stored):
            return
        if reason.is_failure:
            self._refused(entry, reason)
            return
        self._outbox.mark_delivered(entry.seq, len(entry.body))
        if self._refusals.pop(entry.seq, None) is not None:
            self._clear_refused()
        self._on_delivered(entry)

    def _topic_refused(self, topic: str, reason: ReasonCode, logged: bool) -> None:
        """Any PUBACK ≥ 0x80 is the `publish_refused` problem, naming the topic and the
        reason, until a publish on that topic is accepted again. (Refused events also
        follow the retry and parking rules of `publish_rejected` below, which logs them:
        `logged`.)"""
        if not reason.is_failure and not self._refused_topics:
            return  # the usual case, on every PUBACK: no lock
        with self._wake:
            before = dict(self._refused_topics)
            if reason.is_failure:
                self._refused_topics[topic] = f"{reason} ({reason.value})"
            else:
                self._refused_topics.pop(topic, None)
            now = dict(self._refused_topics)
        if now == before:
            return
        if not now:
            self._health.clear("publish_refused")
            return
        if reason.is_failure and not logged:
            log(logger, "error", "uplink.publish_refused", topic=topic, reason=str(reason),
                code=reason.value, action="the township broker's ACL refuses this topic: "
                "check the station id, its certificate and the township ACL")
        listed = "; ".join(f"{t}: {r}" for t, r in sorted(now.items()))
        self._health.set(
            "publish_refused", f"乡镇平台拒收发布：{listed}",
            f"the township broker refused publishing to {listed}",
            action="check the station id, its certificate and the township ACL "
                   "(pingan-centre broker acl)",
            detail={"refused": [{"topic": t, "reason": r} for t, r in sorted(now.items())]})

    def _refused(self, entry: Stored, reason: ReasonCode) -> None:
        retry_in = self._config.uplink.backoff_max_s
        with self._wake:
            count = self._refusals.get(entry.seq, 0) + 1
            park = count >= MAX_REFUSALS and entry.seq > 0  # seq 0 exists only in memory
            if park:
                self._refusals.pop(entry.seq, None)
            else:
                self._refusals[entry.seq] = count
                self._rejected.append(entry)
                if self._rejected_due is None:
                    self._rejected_due = time.monotonic() + retry_in
                self._wake.notify()
        if not park:
            log(logger, "error", "uplink.publish_rejected", seq=entry.seq, id=entry.id,
                type=entry.type, reason=str(reason), refusals=count, of=MAX_REFUSALS,
                retry_in_s=retry_in,
                action="the broker refused this topic: check the station id, certificate "
                       "and the township ACL; other events keep flowing")
            self._health.set("publish_rejected", f"乡镇平台拒收事件（{reason}），将重试",
                             f"the township broker refused events ({reason}); retrying",
                             action="check the station id, certificate and the township ACL")
            return
        # Counted here, not read back from the outbox: this runs on the network thread,
        # which must not wait for the writer (parked rows go back to the drain at start,
        # so this process's own count is the whole of it).
        self._outbox.park(entry.seq, str(reason))
        with self._wake:
            self._parked.append(entry.type)
            parked = list(self._parked)
        alarms = parked.count("alarm.panic")
        log(logger, "error", "uplink.publish_parked", seq=entry.seq, id=entry.id,
            type=entry.type, reason=str(reason), parked=len(parked), parked_alarms=alarms,
            action="refused too often: kept in the outbox, not resent until the station "
                   "restarts; fix the township ACL / the station's identity, then restart")
        self._health.set(
            "publish_rejected",
            f"乡镇平台拒收 {len(parked)} 条事件（含 {alarms} 条报警，{reason}），已保存在本机，"
            f"修正后重启本站即重发",
            f"the township broker refused {len(parked)} events ({alarms} alarms; {reason}); "
            f"kept on the unit, resent after the station restarts",
            action="fix the township ACL / the station's identity, then restart the station")

    def _clear_refused(self) -> None:
        with self._wake:
            outstanding = bool(self._refusals or self._rejected)
            outstanding = outstanding or bool(self._parked)
        if not outstanding:
            self._health.clear("publish_rejected")

    def _resend_rejected(self) -> None:
        """Called with the lock held: refused rows go back to the pump."""
        self._retry.extend(self._rejected)
        self._rejected.clear()
        self._rejected_due = None
        self._fresh = True

    # --- the pump --------------------------------------------------------------------

    def _ready(self) -> bool:
        """Whether the pump has something to do now (call with the lock held)."""
        if not self._connected:
            return False
        if self._state_due:
            return True
        free = self._window - len(self._inflight)
        if self._fresh:
            return free > 0
        return self._backlog and free >= max(1, self._window // 2)

    def _run_pump(self) -> None:
        interval = self._config.uplink.state_interval_s
        next_state = time.monotonic() + interval
        while not self._stopping.is_set():
            with self._wake:
                while not self._stopping.is_set() and (
                        not self._ready() or not self._handover.pump_may_send()):
                    timeout = next_state - time.monotonic()
                    if timeout <= 0:
                        self._state_due = True
                        next_state = time.monotonic() + interval
                        continue
                    if self._rejected_due is not None:
                        due = self._rejected_due - time.monotonic()
                        if due <= 0:
                            self._resend_rejected()
                            continue
                        timeout = min(timeout, due)
                    self._wake.wait(timeout)
                if self._stopping.is_set():
                    return
                state_due, self._state_due = self._state_due, False
                self._fresh = False
                room = self._window - len(self._inflight)
                retry, self._retry = self._retry[:room], self._retry[room:]
            drained = False
            try:
                if state_due:
                    next_state = time.monotonic() + interval
                    info = self._publish(self.topics.state, self._state_payload(True),
                                         retain=True)
                    self._track(info.mid, _Latest(self.topics.state))
                    room -= 1
                asked = max(0, room - len(retry))
                fetched = self._outbox.pending(self._cursor, asked)
                rows = retry + fetched
                # All that was committed before the query is handed over: unless a commit
                # came meanwhile (fell_behind), the writer may send the next one itself.
                drained = self._hand_over(rows) and len(fetched) < asked
            except Exception:  # the pump must outlive whatever paho or the store raised
                logger.exception("uplink.pump_failed", extra={"fields": {
                    "action": "retrying in a second; events stay in the outbox; report this "
                              "log line"}})
                with self._wake:
                    # Retries taken for this round go back (a repeat is harmless: the
                    # township de-duplicates by id); the rest is found by the next query.
                    self._retry[:0] = retry
                    self._fresh = True
                    self._handover.pump_done(False)
                self._stopping.wait(1.0)
                continue
            with self._wake:
                self._backlog = len(rows) >= room or bool(self._retry)
                self._handover.pump_done(drained and not self._retry and not self._fresh
                                         and self._connected)

    def _hand_over(self, rows: list[Stored]) -> bool:
        """Publish `rows` in order; False if paho refused one. The rows not handed over
        stay behind the cursor, so the pump's next query finds them again (those that
        came from the retry list go back to it)."""
        for n, row in enumerate(rows):
            info = self._publish(self.topics.for_type(row.type), row.body)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log(logger, "warning", "uplink.publish_failed", rc=str(info.rc), seq=row.seq)
                with self._wake:
                    self._retry.extend(r for r in rows[n:]
                                       if r.seq <= self._cursor.get(r.priority, 0))
                return False
            with self._wake:
                self._cursor[row.priority] = max(self._cursor.get(row.priority, 0), row.seq)
            self._track(info.mid, row)
        return True


def set_no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Small QoS 1 packets must not wait for Nagle + delayed ACK (~40 ms each)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
