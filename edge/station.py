"""The one place that wires a station together, and what it does with its inputs.

Parts talk through plain method calls: buttons → `raise_alarm` → outbox → uplink;
uplink → `_command` / `_delivered` → indicator. Nothing here is global.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TextIO

import msgspec
from gpiozero import LED

from edge import __version__, camera, commands
from edge import modem as modem_parts
from edge.audio.loudspeaker import Loudspeaker
from edge.buttons import StationButtons
from edge.config import Config, ConfigError
from edge.control import ControlError, ControlServer, Press, Request
from edge.events import (
    AlarmPanic,
    AudioPayload,
    AudioPlayback,
    ButtonBroadcast,
    ButtonPayload,
    CameraPerson,
    CameraPersonPayload,
    CmdResult,
    CmdResultPayload,
    ErrorInfo,
    Event,
    PanicPayload,
    encode,
    stamp,
    text,
)
from edge.health import Health
from edge.indicator import AlarmIndicator
from edge.localbroker import Mosquitto, reachable
from edge.logs import log
from edge.outbox import Eviction, Outbox, OutboxFull, Stored
from edge.pins import is_simulated, make_factory
from edge.telemetry import Telemetry
from edge.uplink import Uplink
from edge.watchdog import Watchdog

logger = logging.getLogger("edge.station")


class Station:
    def __init__(self, config: Config) -> None:
        self.health = Health()
        data_dir = config.data_dir
        self._lock_file = _lock(data_dir)

        self.local_broker: Mosquitto | None = None
        broker = config.broker
        if broker.local_fallback and not reachable(broker.host, broker.port):
            self.local_broker = Mosquitto(data_dir / "broker").start()
            log(logger, "warning", "station.local_broker", port=self.local_broker.port,
                unreachable=f"{broker.host}:{broker.port}",
                action="simulation only: started a private mosquitto on loopback")
            broker = msgspec.structs.replace(broker, host="127.0.0.1",
                                             port=self.local_broker.port)
            config = msgspec.structs.replace(config, broker=broker)
        self.config = config

        self.pin_factory = make_factory(config.pins.factory)
        self.outbox = Outbox(
            data_dir / "outbox.db",
            max_bytes=config.outbox.max_bytes, keep_delivered=config.outbox.keep_delivered,
            batch_max=config.outbox.batch_max,
            on_commit=lambda _rows: self.uplink.notify(), on_evict=self._evicted,
            health=self.health,
        )
        self.uplink = Uplink(config, self.outbox, self.health,
                             on_command=self._command, on_delivered=self._delivered)
        self.led = LED(config.pins.alarm_led, pin_factory=self.pin_factory)
        self.indicator = AlarmIndicator(self.led, config.indicator.ack_display_s)
        self.buttons = StationButtons(self.pin_factory, config.pins, config.buttons,
                                      on_panic=self._panic_pressed,
                                      on_broadcast=self._broadcast_pressed)
        self.buttons.broadcast.when_released = self._broadcast_released
        self.loudspeaker: Loudspeaker | None = None
        if config.audio.enabled:
            try:
                self.loudspeaker = Loudspeaker(
                    config.audio, data_dir, pin_factory=self.pin_factory,
                    amp_pin=config.pins.amp_relay, health=self.health, emit=self._audio_event)
            except (OSError, sqlite3.Error) as exc:  # its state lives in the data directory
                self.health.set("audio_unavailable", f"喇叭无法启动（数据目录）：{exc}",
                                f"loudspeaker cannot start (data directory): {exc}",
                                action="see storage_unwritable; alarms are still sent")
        self.control = ControlServer(config.control_socket, self._control)
        self._stopping = threading.Event()
        self.watchdog = Watchdog(self.healthy)
        self._seen = commands.SeenCommands()
        self.camera: camera.CameraPipeline | None = None
        if config.camera.enabled:
            try:
                self.camera = camera.build(config.camera, self.health, self._person_seen)
            except camera.DetectorError as exc:
                # The rest of the unit works without the camera; the township sees why.
                self.health.set("camera_detector", f"摄像头人形检测无法启动：{exc}",
                                f"camera person detector cannot start: {exc}",
                                action="run models/build.sh or fix camera.model")
        # The 4G modem (SMS fallback, signal) and health telemetry: their own threads.
        self.modem = modem_parts.build(config, self.pin_factory, self.outbox, self.uplink,
                                       self.health, self._submit)
        self.telemetry = Telemetry(
            config, self.outbox, self.uplink, modem=self.modem.report if self.modem else None,
            held_back=self.modem.held_back if self.modem else None,
        ) if config.health.enabled else None

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        pending_alarms = self.outbox.pending_ids("alarm.panic")
        for event_id in pending_alarms:
            self.indicator.raised(event_id)
        self.uplink.start()
        if self.loudspeaker:
            self.loudspeaker.start()
        self.control.start()
        self.watchdog.start()
        if self.camera:
            self.camera.start()
        if self.modem:
            self.modem.start()
        if self.telemetry:
            self.telemetry.start()
        log(logger, "info", "station.started", station=self.config.station.id,
            township=self.config.station.township, version=__version__,
            broker=f"{self.config.broker.host}:{self.config.broker.port}",
            pins=self.config.pins.factory, pending=self.outbox.pending_count(),
            pending_alarms=len(pending_alarms), data_dir=str(self.config.data_dir))

    def stop(self) -> None:
        """Stop taking input, commit what was accepted, say offline, close. Under ~1 s."""
        started = time.monotonic()
        self._stopping.set()  # ends a simulated press burst in progress
        self.watchdog.stop()
        self.buttons.close()
        self.control.close()
        if self.loudspeaker:
            self.loudspeaker.close()
        if self.camera:
            self.camera.stop(timeout=0.3)
        if self.telemetry:
            self.telemetry.close()
        if self.modem:
            self.modem.close()
        self.outbox.flush(timeout=0.3)
        self.uplink.stop(timeout=0.5)
        self.outbox.close()
        self.led.close()
        self.pin_factory.close()
        if self.local_broker:
            self.local_broker.stop()
        if self._lock_file:
            self._lock_file.close()
        log(logger, "info", "station.stopped", took_s=round(time.monotonic() - started, 3))

    def healthy(self) -> bool:
        """The alarm path can work: its threads run and the outbox writer answers."""
        return self.uplink.alive and self.outbox.alive and self.outbox.flush(timeout=5.0)

    # --- inputs ----------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"station": self.config.station.id, "township": self.config.station.township,
                **stamp()}

    def _panic_pressed(self, held_s: float) -> None:
        self.raise_alarm("button", held_s)

    def _broadcast_pressed(self, held_s: float) -> None:
        self.broadcast_pressed(held_s)
        if self.loudspeaker:
            self.loudspeaker.ptt_press()

    def _broadcast_released(self) -> None:
        if self.loudspeaker:
            self.loudspeaker.ptt_release()

    def raise_alarm(self, source: str, held_s: float) -> Future[Stored]:
        event = AlarmPanic(payload=PanicPayload(source=source, held_s=held_s),  # type: ignore[arg-type]
                           **self._identity())
        self.indicator.raised(event.id)
        log(logger, "warning", "alarm.raised", id=event.id, source=source)
        future = self._submit(event)
        if self.loudspeaker:  # after the event is on its way to disk: never delays it
            self.loudspeaker.siren()
        return future

    def broadcast_pressed(self, held_s: float) -> Future[Stored]:
        event = ButtonBroadcast(
            payload=ButtonPayload(button="broadcast", source="button", held_s=held_s),
            **self._identity())
        return self._submit(event)

    def _person_seen(self, sighting: camera.Sighting) -> None:
        self._submit(CameraPerson(payload=CameraPersonPayload(
            score=sighting.score, box=sighting.box, zone=sighting.zone,
            snapshot_jpeg=sighting.snapshot_b64()), **self._identity()))

    def _submit(self, event: Event) -> Future[Stored]:
        future = self.outbox.submit(event)
        future.add_done_callback(lambda f: self._stored(event, f))
        return future

    def _stored(self, event: Event, future: Future[Stored]) -> None:
        exc = future.exception()
        if exc is None:
            stored = future.result()
            log(logger, "info", "event.accepted", id=stored.id, seq=stored.seq, type=stored.type)
            self.health.clear("outbox_failed")
            if isinstance(event, AlarmPanic) and self.loudspeaker and not self.uplink.connected:
                self.loudspeaker.prompt("alarm_saved_link_down")
            return
        log(logger, "error", "event.refused", id=event.id, error=str(exc),
            action="see outbox.write_failed / outbox.evicted")
        if isinstance(exc, OutboxFull):
            return
        self.health.set("outbox_failed", f"事件无法保存到本机存储：{exc}",
                        f"events cannot be stored locally: {exc}",
                        action="free disk space or replace the SD card")
        if isinstance(event, AlarmPanic):
            # Not durable, but the township must still hear of it: send it from memory.
            self.uplink.publish_volatile(Stored(0, event.id, "alarm.panic", event.priority,
                                                encode(event)))

    # --- from the uplink -------------------------------------------------------------

    def _delivered(self, stored: Stored) -> None:
        if stored.type == "alarm.panic":
            self.indicator.delivered(stored.id)
            if self.loudspeaker:
                self.loudspeaker.prompt("alarm_sent")
            log(logger, "info", "alarm.delivered", id=stored.id, seq=stored.seq)

    def _evicted(self, info: Eviction) -> None:
        self.health.set(
            "outbox_evicted",
            f"离线过久，已丢弃 {info.count} 条低优先级事件"
            f"（序号 {info.first_seq}–{info.last_seq}），报警均保留",
            f"offline too long: dropped {info.count} lower-priority events "
            f"(seq {info.first_seq}-{info.last_seq}); all alarms kept")

    def _command(self, topic: str, payload: bytes) -> None:
        try:
            cmd = commands.parse(payload, self.config.uplink.max_command_bytes)
        except commands.CommandRejected as rejected:
            self._reject(topic, rejected)
            return
        if not self._seen.first_time(cmd.id):
            log(logger, "info", "command.duplicate", id=cmd.id, topic=topic)
            return
        try:
            detail = self._execute(cmd)
        except commands.CommandRejected as rejected:
            self._reject(topic, rejected)
            return
        except Exception as exc:
            logger.exception("command.failed", extra={"fields": {"cmd_id": cmd.id}})
            self._answer(cmd.id, _tag(cmd), False, ErrorInfo(
                code="internal_error", message=text("站点执行命令出错", f"station error: {exc}")))
            return
        log(logger, "info", "command.done", cmd=_tag(cmd), cmd_id=cmd.id, by=cmd.by, detail=detail)
        self._answer(cmd.id, _tag(cmd), True, None, detail)

    def _reject(self, topic: str, rejected: commands.CommandRejected) -> None:
        log(logger, "warning", "command.rejected", topic=topic, cmd_id=rejected.cmd_id,
            code=rejected.error.code, error=rejected.error.message.en,
            action="the township sent a bad command; it was answered on cmd/result")
        self._answer(rejected.cmd_id, rejected.cmd, False, rejected.error)

    def _execute(self, cmd: commands.Command) -> dict[str, Any]:
        if isinstance(cmd, commands.AlarmAck):
            found = self.outbox.lookup(cmd.event_id)
            if found is None or found[0] != "alarm.panic":
                raise commands.CommandRejected(ErrorInfo(
                    code="unknown_event",
                    message=text(f"本站没有报警 {cmd.event_id}",
                                 f"no alarm {cmd.event_id} at this station")), cmd.id, _tag(cmd))
            self.indicator.acknowledged(cmd.event_id)
            if self.loudspeaker:
                self.loudspeaker.silence_siren()
                self.loudspeaker.prompt("alarm_received")
            return {"event_id": cmd.event_id}
        if isinstance(cmd, commands.AudioCommand):
            if self.loudspeaker is None:
                raise commands.CommandRejected(ErrorInfo(
                    code="audio_unavailable",
                    message=text("本站未启用喇叭", "this station has no loudspeaker "
                                 "(audio.enabled = false)")), cmd.id, _tag(cmd))
            return self.loudspeaker.execute(cmd)
        if isinstance(cmd, commands.CameraArm | commands.CameraDisarm):
            if self.camera is None:
                raise commands.CommandRejected(ErrorInfo(
                    code="invalid_command",
                    message=text("本站摄像头未启用", "the camera is not enabled at this station")),
                    cmd.id, _tag(cmd))
            self.camera.arming.set(isinstance(cmd, commands.CameraArm), cmd.for_s)
            return {"armed": self.camera.arming.armed(), "for_s": cmd.for_s}
        self.uplink.request_state()
        return {}

    def _audio_event(self, payload: AudioPayload) -> None:
        self._submit(AudioPlayback(payload=payload, **self._identity()))

    def _answer(self, cmd_id: str | None, cmd: str | None, ok: bool,
                error: ErrorInfo | None, detail: dict[str, Any] | None = None) -> None:
        self._submit(CmdResult(payload=CmdResultPayload(cmd_id=cmd_id, cmd=cmd, ok=ok,
                                                        error=error, detail=detail or {}),
                               **self._identity()))

    # --- the local control socket ----------------------------------------------------

    def _control(self, request: Request) -> dict[str, Any]:
        if isinstance(request, Press):
            return self.press(request)
        return self.status()

    def press(self, request: Press) -> dict[str, Any]:
        """Drive a simulated button from the electrical side, as a finger would."""
        if not is_simulated(self.pin_factory):
            raise ControlError("buttons can only be pressed from software with "
                               "pins.factory = 'mock'; press the real button")
        pins, timings = self.config.pins, self.config.buttons
        pin = self.pin_factory.pin(pins.panic if request.button == "panic" else pins.broadcast)
        configured = timings.panic_hold_s if request.button == "panic" else timings.broadcast_hold_s
        hold = request.hold_s if request.hold_s is not None else (
            round(configured + 0.15, 3) if configured else 0.0)
        press, release = ((pin.drive_low, pin.drive_high) if pins.pull_up
                          else (pin.drive_high, pin.drive_low))
        for i in range(request.count):
            if self._stopping.is_set():
                break
            press()
            if hold:
                time.sleep(hold)
            release()
            if request.interval_s and i + 1 < request.count:
                time.sleep(request.interval_s)
        return {"pressed": request.count, "button": request.button, "hold_s": hold}

    def status(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "station": cfg.station.id, "township": cfg.station.township,
            "version": __version__, "broker": {"host": cfg.broker.host, "port": cfg.broker.port},
            "connected": self.uplink.connected, "pending": self.outbox.pending_count(),
            "alarm_led": self.indicator.mode.value, "topics": self.uplink.topics.root,
            "problems": [msgspec.to_builtins(p) for p in self.health.problems()],
            "data_dir": str(cfg.data_dir),
            "audio": self.loudspeaker.status() if self.loudspeaker else None,
            "camera": self.camera.status() if self.camera else None,
            "modem": self.modem.status() if self.modem else None,
            "counters": self.health.counts(),
        }


class AlreadyRunning(ConfigError):
    """Another pingan-edge holds this data directory: a restart cannot fix that."""


def _lock(data_dir: Path) -> TextIO | None:
    """Hold `station.lock` for life. A directory that cannot be written gives no lock and
    no refusal: the outbox reports it and the station pages from memory."""
    path = data_dir / "station.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(path, "a")  # noqa: SIM115 - held for life
    except OSError as exc:
        try:  # a read-only directory: an existing lock file still excludes a second station
            lock_file = open(path)  # noqa: SIM115
        except OSError:
            log(logger, "error", "station.lock_unavailable", data_dir=str(data_dir),
                error=str(exc), action="the data directory cannot be written; see the "
                "storage_unwritable problem")
            return None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock_file.close()
        raise AlreadyRunning(
            f"another pingan-edge already runs with data directory {data_dir}") from exc
    return lock_file


def _tag(cmd: commands.Command) -> str:
    return str(type(cmd).__struct_config__.tag)
