"""The MQTT subscriber: a persistent shared subscription, a bounded queue, one worker.

paho's network thread only queues what arrives (callbacks on I/O threads return at
once). The worker stores a batch in one transaction and only then acknowledges each
message to the broker (manual PUBACK): a centre killed mid-batch gets the batch again
from its persistent session, and the event ids make the second copy harmless.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import paho.mqtt.client as mqtt
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from pingan_centre import topics
from pingan_centre.console.config import CentreConfig
from pingan_centre.console.link import encode
from pingan_centre.console.logs import log
from pingan_centre.console.store import Checked, parse, quarantine, store
from pingan_centre.console.validate import Rejected
from pingan_centre.console.words import both, shown

# Asked of the broker: at most this many unacknowledged messages in flight to us.
RECEIVE_MAXIMUM = 200
BATCH = 200
QUEUE = 1000

Message = tuple[str, bytes, int, int]


class Ingest:
    """The runtime's MQTT part. It is also the `Effects` that what it stores is handed:
    `send` publishes through its own client, `changed` is the callback it was given."""

    def __init__(self, cfg: CentreConfig, changed: Callable[[], None] = lambda: None,
                 clock: Callable[[], datetime] = timezone.now) -> None:
        self.cfg = cfg
        self.clock = clock
        self._changed = changed
        self.queue: queue.Queue[Message | None] = queue.Queue(maxsize=QUEUE)
        self.connected = threading.Event()
        self.stored = 0
        self._stop = threading.Event()
        self._started = False
        self._worker = threading.Thread(target=self._work, name="centre-ingest", daemon=True)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        if cfg.broker_username:
            self.client.username_pw_set(cfg.broker_username, cfg.broker_password or None)
        if cfg.broker_tls_ca:
            try:
                self.client.tls_set(ca_certs=cfg.broker_tls_ca)
            except (OSError, ValueError) as exc:  # ssl says which errno, not which file
                raise ValueError(f"broker tls_ca {cfg.broker_tls_ca}: {exc}") from exc
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> Ingest:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        self._started = True
        self._worker.start()
        try:
            self.client.connect_async(self.cfg.broker_host, self.cfg.broker_port,
                                      keepalive=15, clean_start=False, properties=props)
            self.client.loop_start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Idempotent and bounded. What is queued but not stored is not acknowledged: the
        broker keeps it in this centre's session and sends it again."""
        if self._stop.is_set() or not self._started:
            self._stop.set()
            return
        # The flag first: the network thread, if it waits on a full queue, gives up its
        # message (unacknowledged) and the worker stops after the batch it is in.
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        with contextlib.suppress(queue.Full):  # full: the worker sees the flag after its batch
            self.queue.put_nowait(None)
        self._worker.join(10)
        if self._worker.is_alive():
            log("warning", "ingest.close_timeout", action="a database call hangs")

    # --- Effects: what the stored changes do outside their transaction ------------------

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        info = self.client.publish(topic, encode(payload), qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS or info.rc == mqtt.MQTT_ERR_NO_CONN

    def publish_volatile(self, topic: str, body: bytes) -> bool:
        """QoS 0: live voice, which is useless late; dropped while the link is down."""
        if not self.connected.is_set():
            return False
        return self.client.publish(topic, body, qos=0).rc == mqtt.MQTT_ERR_SUCCESS

    def changed(self) -> None:
        self._changed()

    # --- paho's network thread: queue and return --------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any,
                    _p: Any = None) -> None:
        if reason.is_failure:
            log("error", "ingest.refused", reason=str(reason),
                action="check the centre's broker account (pingan-centre broker add-account)")
            return
        # From the topic table: shared subscriptions for events (each reaches one
        # process of the group, for redundant centres), direct ones for retained topics.
        client.subscribe(topics.centre_subscriptions(self.cfg.township, self.cfg.share_group))
        self.connected.set()
        log("info", "ingest.connected", host=self.cfg.broker_host, port=self.cfg.broker_port,
            session_present=bool(_f.session_present))

    def _on_disconnect(self, *_: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log("warning", "ingest.disconnected", action="reconnecting; the broker keeps "
                "this centre's session, nothing is lost while it is away")

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Blocks only when the worker is a full queue behind: paho then stops reading the
        # socket and the broker holds the rest (back-pressure; nothing is dropped). The
        # worker's PUBACKs do not need this thread to be free to be queued.
        item = (msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    # --- the worker -------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._drain()
        finally:
            connection.close()

    def _drain(self) -> None:
        while not self._stop.is_set():
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < BATCH:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._store(batch)
                    return
                batch.append(item)
            self._store(batch)

    def _store(self, batch: list[Message]) -> None:
        close_old_connections()
        now = self.clock()
        checked: list[Checked] = []
        aside: list[tuple[str, bytes, str]] = []
        for topic, payload, _mid, _qos in batch:
            try:
                item = parse(topic, payload, self.cfg.township, self.cfg.max_payload_bytes)
            except Rejected as why:
                aside.append((topic, payload, why.reason))
                continue
            if item is not None:
                checked.append(item)
        while True:
            try:
                try:
                    with transaction.atomic():
                        for topic, payload, reason in aside:
                            self._aside(topic, payload, reason, now)
                        store(checked, now, self)
                except (OperationalError, InterfaceError):
                    raise
                except Exception as exc:
                    # Not the database being away: one message it refuses (or a bug) must
                    # not hold up the rest for ever. Each alone; what fails is kept aside.
                    log("error", "ingest.batch_refused", error=repr(exc), batch=len(batch),
                        action="storing one by one; what fails is in Quarantine")
                    self._store_each(checked, aside, now)
                break
            except Exception as exc:  # the database is away: keep, retry
                log("error", "ingest.store_failed", error=repr(exc), batch=len(batch),
                    action="check the database; messages stay unacknowledged meanwhile")
                close_old_connections()
                if self._stop.wait(1.0):
                    return
        for _topic, _payload, mid, qos in batch:
            if qos > 0:
                self.client.ack(mid, qos)
        self.stored += len(batch)

    def _store_each(self, checked: list[Checked], aside: list[tuple[str, bytes, str]],
                    now: datetime) -> None:
        """The batch one message at a time; the database being away still raises."""
        for topic, payload, reason in aside:
            with transaction.atomic():
                self._aside(topic, payload, reason, now)
        for item in checked:
            try:
                with transaction.atomic():
                    store([item], now, self)
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:
                with transaction.atomic():
                    self._aside(item[0], json.dumps(item[2], ensure_ascii=False).encode(
                        "utf-8", "replace"), both("平台无法保存此消息",
                                                  f"the centre could not store it: {exc!r}"),
                        now)

    def _aside(self, topic: str, payload: bytes, reason: str, now: datetime) -> None:
        quarantine(topic, payload, reason, now)
        log("warning", "ingest.quarantined", topic=topic, reason=shown(reason, "en"),
            action="see Quarantine in the console; the station sent a bad payload")
