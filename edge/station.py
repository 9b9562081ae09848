"""The one place that wires a station together, and nothing else.

Its parts are built in order onto one stack, started in that order, and a stop is the
stack unwinding: each part closes in the reverse order, within its share of the stop
budget. Parts talk through plain method calls: buttons → the alarm → the recorder → the
outbox → the uplink → the township; the uplink → the command worker (edge/link/dispatch.py)
→ the handler each part registered; the uplink's PUBACKs → the alarm. Nothing is global.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from edge import __version__, audio, camera, modem
from edge.audio.loudspeaker import Loudspeaker
from edge.config import Config
from edge.contract.events import text
from edge.health import Health
from edge.lifecycle import Parts
from edge.link.dispatch import CommandWorker, Handlers
from edge.link.telemetry import Telemetry
from edge.link.uplink import PublishHook, Uplink
from edge.logs import log
from edge.store.datadir import hold_data_dir
from edge.store.outbox import Outbox
from edge.store.recorder import Recorder
from edge.unit.alarm import Alarm
from edge.unit.buttons import StationButtons
from edge.unit.control import ControlServer, StatusRequest
from edge.unit.indicator import Mode
from edge.unit.pins import make_factory
from edge.unit.watchdog import Watchdog
from edge.update.updater import (
    ApplyRequest,
    Blocked,
    SettleRequest,
    Updater,
    UpdateStatusRequest,
)

logger = logging.getLogger("edge.station")

# systemd kills a station TimeoutStopSec (5 s) after asking it to stop: a stop takes at most
# this, shared out among the parts below (their shares add up to it).
STOP_BUDGET_S = 3.0


class Station:
    def __init__(self, config: Config, *,
                 make_loudspeaker: Callable[..., Loudspeaker] = Loudspeaker,
                 before_publish: PublishHook | None = None) -> None:
        """`make_loudspeaker` builds the loudspeaker stage (Loudspeaker's signature): a
        test or a bench may hand in a subclass that watches or holds back what it is
        asked for; a station in service uses Loudspeaker itself. `before_publish` goes to
        the uplink (see Uplink)."""
        self._parts = Parts(STOP_BUDGET_S)
        self._stopped = False
        try:  # a part that fails to build closes those built before it
            self._build(config, make_loudspeaker, before_publish)
        except BaseException:
            self._parts.close()
            raise

    def _build(self, config: Config, make_loudspeaker: Callable[..., Loudspeaker],
               before_publish: PublishHook | None) -> None:
        parts = self._parts
        self.config = config
        self.health = Health()
        lock = hold_data_dir(config.data_dir)
        if lock is not None:
            parts.hold(lock.close)
        self.pin_factory = make_factory(config.pins.factory)
        parts.hold(self.pin_factory.close)
        # In the order they start; a stop closes them the other way round, each within
        # its share (seconds) of STOP_BUDGET_S. The outbox closes last: it commits what
        # the others handed it while they stopped.
        self.outbox = parts.add(Outbox(
            config.data_dir / "outbox.db", max_bytes=config.outbox.max_bytes,
            keep_delivered=config.outbox.keep_delivered, batch_max=config.outbox.batch_max,
            on_commit=lambda rows: self.uplink.notify(rows), health=self.health), 0.95)
        self.recorder = Recorder(config.station, self.outbox, self.health)
        self.handlers = Handlers()
        self.loudspeaker = audio.attach(config, self.pin_factory, self.health, self.recorder,
                                        self.handlers, make=make_loudspeaker)
        if self.loudspeaker:
            parts.add(self.loudspeaker, 0.2)
        self.commands = CommandWorker(self.handlers, self.recorder, self.outbox,
                                      max_bytes=config.uplink.max_command_bytes,
                                      queue_size=config.uplink.command_queue)
        self.uplink = Uplink(config, self.outbox, self.health, on_command=self._on_message,
                             on_delivered=lambda stored: self.alarm.delivered(stored),
                             before_publish=before_publish,
                             clips=self.loudspeaker.clips.held if self.loudspeaker else None)
        if self.loudspeaker:
            self.loudspeaker.clips.on_change = self.uplink.request_state
        self.uplink.register(self.handlers)
        self.alarm = parts.add(Alarm(config, self.pin_factory, recorder=self.recorder,
                                     outbox=self.outbox, link=self.uplink,
                                     sounder=self.loudspeaker), 0.05)
        self.alarm.register(self.handlers)
        parts.add(self.uplink, 0.6)  # closed before the alarm: no PUBACK finds its LED closed
        parts.add(self.commands, 0.25)  # before the parts it drives; later ones: `stopping`
        self.camera = camera.attach(config.camera, self.health, self.recorder, self.handlers)
        if self.camera:
            parts.add(self.camera, 0.15)
        self.modem = modem.attach(config, self.pin_factory, self.outbox, self.uplink,
                                  self.health, self.recorder.record)
        if self.modem:
            parts.add(self.modem, 0.4)
        self.telemetry = parts.add(Telemetry(
            config, self.outbox, self.uplink, modem=self.modem.report if self.modem else None,
            held_back=self.modem.held_back if self.modem else None,
        ), 0.1) if config.health.enabled else None
        self.buttons = parts.add(StationButtons(
            self.pin_factory, config.pins, config.buttons, recorder=self.recorder,
            raise_alarm=self.alarm.raise_alarm, talk=self.loudspeaker), 0.05)
        # Answers once the buttons exist: a simulated press that reached gpiozero while a
        # Button was still being built raised inside it (AttributeError, no reply).
        self.control = parts.add(ControlServer(config.control_socket), 0.15)
        self.control.register(StatusRequest, lambda _request: self.status())
        # Updates: their own thread at low priority; closing is not waited for (share 0).
        self.updater = parts.add(Updater(
            config.update, config.data_dir, self.recorder, self.outbox,
            busy=self.update_blocked, rebooting=self.alarm.indicator.updating), 0.0) \
            if config.update.enabled else None
        if self.updater:
            self.updater.register(self.handlers)
            self.control.register(ApplyRequest, self.updater.apply)
            self.control.register(UpdateStatusRequest, self._update_status)
            self.control.register(SettleRequest, self.updater.settle)
        self.watchdog = parts.add(Watchdog(self.healthy), 0.1)  # READY=1 once all run

    def _on_message(self, topic: str, payload: bytes) -> None:
        """On paho's network thread: live speech to the loudspeaker's decoder, every
        other message to the command worker; both only queue."""
        if topic.endswith("/voice"):
            if self.loudspeaker is not None:
                self.loudspeaker.voice.receive(topic, payload)
            return
        self.commands.receive(topic, payload)

    def start(self) -> None:
        self._parts.start()
        log(logger, "info", "station.started", station=self.config.station.id,
            township=self.config.station.township, version=__version__,
            broker=f"{self.config.broker.host}:{self.config.broker.port}",
            pins=self.config.pins.factory, pending=self.outbox.pending_count(),
            pending_alarms=len(self.outbox.pending_ids("alarm.panic")),
            data_dir=str(self.config.data_dir))

    def stop(self) -> None:
        """Stop taking input, commit what was accepted, say offline, close: within
        STOP_BUDGET_S whatever hangs. Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        started = time.monotonic()
        self._parts.close()
        log(logger, "info", "station.stopped", took_s=round(time.monotonic() - started, 3),
            parts=self._parts.took_s)

    def healthy(self) -> bool:
        """The alarm path can work: its threads run and the outbox writer answers."""
        return self.uplink.alive and self.outbox.alive and self.outbox.flush(timeout=5.0) \
            and self.commands.alive

    def update_blocked(self) -> Blocked | None:
        """Why the unit must not reboot now, if it must not: an alarm open (not yet
        acknowledged by the township, or not yet delivered) or the siren sounding."""
        if self.alarm.indicator.mode in (Mode.PENDING, Mode.DELIVERED):
            return Blocked("alarm_open", text(
                "报警未确认（乡镇尚未确认收到）",
                "an alarm is open (not yet acknowledged by the township)"))
        if self.outbox.pending_ids("alarm.panic"):
            return Blocked("alarm_undelivered", text(
                "报警尚未送达乡镇", "an alarm is not yet delivered to the township"))
        current = self.loudspeaker.player.current if self.loudspeaker else None
        if current is not None and current.origin == "siren":
            return Blocked("siren", text("警笛正在鸣响", "the siren is sounding"))
        return None

    def _update_status(self, request: UpdateStatusRequest) -> dict[str, Any]:
        """What `pingan-edge update commit` asks: the updater's state and the link's."""
        assert self.updater is not None
        return {**self.updater.status(request), "connected": self.uplink.connected,
                "client_cert": bool(self.config.broker.tls and self.config.broker.cert_file),
                "blocked": msgspec.to_builtins(self.update_blocked())}

    def status(self) -> dict[str, Any]:
        """What `pingan-edge status` shows: each part's own account of itself."""
        cfg = self.config
        return {
            "station": cfg.station.id, "township": cfg.station.township,
            "version": __version__, "broker": {"host": cfg.broker.host, "port": cfg.broker.port},
            "connected": self.uplink.connected, "pending": self.outbox.pending_count(),
            "alarm_led": self.alarm.indicator.mode.value, "topics": self.uplink.topics.root,
            "problems": [msgspec.to_builtins(p) for p in self.health.problems()],
            "data_dir": str(cfg.data_dir),
            "audio": self.loudspeaker.status() if self.loudspeaker else None,
            "camera": self.camera.status() if self.camera else None,
            "modem": self.modem.status() if self.modem else None,
            "counters": self.health.counts(),
        }
