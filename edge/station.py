"""The one place that wires a station together, and what it does with its inputs.

Parts talk through plain method calls: buttons → `raise_alarm` → outbox → uplink;
uplink → the command worker (edge/dispatch.py) / `_delivered` → indicator. Township
commands reach the parts through one handler table each part registers into.
Nothing here is global.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
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
from edge.dispatch import CommandWorker, Handlers, rejected
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
)
from edge.health import Health
from edge.indicator import AlarmIndicator
from edge.logs import log
from edge.outbox import Eviction, Outbox, OutboxFull, Stored
from edge.pins import is_simulated, make_factory
from edge.telemetry import Telemetry
from edge.uplink import PublishHook, Uplink
from edge.watchdog import Watchdog

FEEDBACK_WAIT_S = 0.05
logger = logging.getLogger("edge.station")

# Command ids remembered (and seeded at start from the answers in the outbox), so that
# each is acted on and answered once.
REMEMBER_COMMANDS = 4096
_result_head = msgspec.json.Decoder(dict[str, Any])


def _answered(bodies: list[bytes]) -> list[str]:
    """The command ids of stored `cmd.result` bodies (newest first), oldest first."""
    ids = []
    for body in reversed(bodies):
        cmd_id = _result_head.decode(body).get("payload", {}).get("cmd_id")
        if isinstance(cmd_id, str):
            ids.append(cmd_id)
    return ids


AUDIO_COMMANDS = (commands.BroadcastPlay, commands.BroadcastStop, commands.ClipPut,
                  commands.ClipDelete, commands.ScheduleSet, commands.ScheduleClear,
                  commands.VolumeSet)


class Station:
    def __init__(self, config: Config, *,
                 make_loudspeaker: Callable[..., Loudspeaker] = Loudspeaker,
                 before_publish: PublishHook | None = None) -> None:
        """`make_loudspeaker` builds the loudspeaker stage (Loudspeaker's signature): a
        test or a bench may hand in a subclass that watches or holds back what it is
        asked for; a station in service uses Loudspeaker itself. `before_publish` goes to
        the uplink (see Uplink)."""
        self._make_loudspeaker = make_loudspeaker
        self._before_publish = before_publish
        # Every part that holds a process, a thread, a file or a pin is closed by this
        # stack: in stop(), or here at once if a later part fails to build.
        self._parts = contextlib.ExitStack()
        try:
            self._build(config, self._parts)
        except BaseException:
            self._parts.close()
            raise

    def _build(self, config: Config, parts: contextlib.ExitStack) -> None:
        self.health = Health()
        data_dir = config.data_dir
        self._lock_file = _lock(data_dir)
        if self._lock_file is not None:
            parts.enter_context(self._lock_file)

        self.local_broker: Any = None
        if config.broker.local_fallback:
            from edge.sim import fallback_broker  # the simulator only, chosen by config

            self.local_broker, config = fallback_broker(config, parts)
        self.config = config

        self.pin_factory = make_factory(config.pins.factory)
        parts.callback(self.pin_factory.close)
        self.outbox = Outbox(
            data_dir / "outbox.db",
            max_bytes=config.outbox.max_bytes, keep_delivered=config.outbox.keep_delivered,
            batch_max=config.outbox.batch_max,
            on_commit=lambda rows: self.uplink.notify(rows), on_evict=self._evicted,
            health=self.health,
        )
        parts.callback(self.outbox.close)
        self.handlers = Handlers()
        self.commands = CommandWorker(
            self.handlers, self._answer, max_bytes=config.uplink.max_command_bytes,
            queue_size=config.uplink.command_queue, remember=REMEMBER_COMMANDS)
        self.commands.remember(_answered(self.outbox.recent("cmd.result", REMEMBER_COMMANDS)))
        self.uplink = Uplink(config, self.outbox, self.health,
                             on_command=self.commands.receive, on_delivered=self._delivered,
                             before_publish=self._before_publish)
        self.led = parts.enter_context(LED(config.pins.alarm_led, pin_factory=self.pin_factory))
        self.indicator = AlarmIndicator(self.led, config.indicator.ack_display_s)
        self.buttons = StationButtons(self.pin_factory, config.pins, config.buttons,
                                      on_panic=self._panic_pressed,
                                      on_broadcast=self._broadcast_pressed,
                                      on_broadcast_released=self._broadcast_released)
        parts.callback(self.buttons.close)
        self.loudspeaker: Loudspeaker | None = None
        if config.audio.enabled:
            try:
                self.loudspeaker = self._make_loudspeaker(
                    config.audio, data_dir, pin_factory=self.pin_factory,
                    amp_pin=config.pins.amp_relay, health=self.health, emit=self._audio_event)
            except (OSError, sqlite3.Error) as exc:  # its state lives in the data directory
                self.health.set("audio_unavailable", f"喇叭无法启动（数据目录）：{exc}",
                                f"loudspeaker cannot start (data directory): {exc}",
                                action="see storage_unwritable; alarms are still sent")
        if self.loudspeaker:
            parts.callback(self.loudspeaker.close)
            self.loudspeaker.register(self.handlers)
        else:
            self.handlers.register(AUDIO_COMMANDS, self._no_loudspeaker)
        self.control = ControlServer(config.control_socket, self._control)
        parts.callback(self.control.close)
        self._stopping = threading.Event()
        # Alarms raised whose siren is not yet asked for: event id → delivered meanwhile.
        # See raise_alarm and _delivered; held only for a dict operation, never while the
        # loudspeaker is called, so the threads that send alarms never wait for audio.
        self._before_siren: dict[str, bool] = {}
        self._before_siren_lock = threading.Lock()
        # Software presses waiting for the events their button raises (edge/sim).
        self._raised = threading.Condition()
        self._collect: list[list[Future[Stored]]] = []
        self.watchdog = Watchdog(self.healthy)
        self.camera: camera.CameraPipeline | None = None
        if config.camera.enabled:
            try:
                self.camera = camera.build(config.camera, self.health, self._person_seen)
            except camera.DetectorError as exc:
                # The rest of the unit works without the camera; the township sees why.
                self.health.set("camera_detector", f"摄像头人形检测无法启动：{exc}",
                                f"camera person detector cannot start: {exc}",
                                action="run models/build.sh or fix camera.model")
        self.handlers.register(commands.AlarmAck, self._alarm_ack)
        self.handlers.register(commands.StateGet, self._state_get)
        self.handlers.register((commands.CameraArm, commands.CameraDisarm), self._camera)
        # The 4G modem (SMS fallback, signal) and health telemetry: their own threads,
        # built last (nothing after them can fail) and closed by stop().
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
        self.commands.start()
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
        if self.camera:
            self.camera.stop(timeout=0.3)
        if self.telemetry:
            self.telemetry.close()
        if self.modem:
            self.modem.close()
        self.commands.stop(timeout=0.3)
        self.outbox.flush(timeout=0.3)
        self.uplink.stop(timeout=0.5)
        self._parts.close()  # the loudspeaker, the outbox, pins, a private broker, the lock
        log(logger, "info", "station.stopped", took_s=round(time.monotonic() - started, 3))

    def healthy(self) -> bool:
        """The alarm path can work: its threads run and the outbox writer answers."""
        return self.uplink.alive and self.outbox.alive and self.outbox.flush(timeout=5.0) \
            and self.commands.alive

    # --- inputs ----------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"station": self.config.station.id, "township": self.config.station.township,
                **stamp()}

    def _panic_pressed(self, held_s: float) -> None:
        self._pressed(self.raise_alarm("button", held_s))

    def _broadcast_pressed(self, held_s: float) -> None:
        self._pressed(self.broadcast_pressed(held_s))
        if self.loudspeaker:
            self.loudspeaker.ptt_press()

    def _broadcast_released(self) -> None:
        if self.loudspeaker:
            self.loudspeaker.ptt_release()

    def raise_alarm(self, source: str, held_s: float) -> Future[Stored]:
        event = AlarmPanic(payload=PanicPayload(source=source, held_s=held_s),  # type: ignore[arg-type]
                           **self._identity())
        # Its PUBACK may come before its siren is asked for (the outbox writer sends a
        # lone alarm itself): "alarm sent" must still follow the siren, so until then a
        # delivery is only noted here, and said below (see _delivered).
        with self._before_siren_lock:
            self._before_siren[event.id] = False
        try:
            future = self._submit(event)
            # What staff see and hear (the LED's blink thread, the siren, a log line)
            # waits until the alarm is stored, and so handed to the uplink: Python runs
            # one thread at a time, and this work must not compete with the alarm on its
            # way. A slow card holds it back FEEDBACK_WAIT_S at most; nobody notices 50 ms.
            concurrent.futures.wait([future], timeout=FEEDBACK_WAIT_S)
            self.indicator.raised(event.id)
            log(logger, "warning", "alarm.raised", id=event.id, source=source)
            if self.loudspeaker:
                self.loudspeaker.siren()
        finally:
            with self._before_siren_lock:
                delivered = self._before_siren.pop(event.id)
        if delivered and self.loudspeaker:
            # Delivered before its siren was asked for: said now, queued behind the siren
            # (the player plays the higher level first; a prompt never cuts in).
            self.loudspeaker.prompt("alarm_sent")
        future.add_done_callback(self._alarm_kept)  # after the siren, on whichever thread
        return future

    def _alarm_kept(self, future: Future[Stored]) -> None:
        if self.loudspeaker and future.exception() is None and not self.uplink.connected:
            self.loudspeaker.prompt("alarm_saved_link_down")

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

    def _pressed(self, future: Future[Stored]) -> Future[Stored]:
        """A button raised this event: a software press waiting for it hears of it."""
        with self._raised:
            for futures in self._collect:
                futures.append(future)
            self._raised.notify_all()
        return future

    def _stored(self, event: Event, future: Future[Stored]) -> None:
        exc = future.exception()
        if exc is None:
            stored = future.result()
            log(logger, "info", "event.accepted", id=stored.id, seq=stored.seq, type=stored.type)
            self.health.clear("outbox_failed")
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
        """On the uplink's network thread, or the outbox writer's (a direct send whose
        PUBACK beat publish() returning): never waits for the press thread or audio."""
        if stored.type == "alarm.panic":
            self.indicator.delivered(stored.id)
            with self._before_siren_lock:
                early = stored.id in self._before_siren
                if early:  # its siren is not asked for yet: raise_alarm says it after
                    self._before_siren[stored.id] = True
            if self.loudspeaker and not early:
                self.loudspeaker.prompt("alarm_sent")
            log(logger, "info", "alarm.delivered", id=stored.id, seq=stored.seq)

    def _evicted(self, info: Eviction) -> None:
        self.health.set(
            "outbox_evicted",
            f"离线过久，已丢弃 {info.count} 条低优先级事件"
            f"（序号 {info.first_seq}–{info.last_seq}），报警均保留",
            f"offline too long: dropped {info.count} lower-priority events "
            f"(seq {info.first_seq}-{info.last_seq}); all alarms kept")

    # --- township commands (run by the command worker, see edge/dispatch.py) ------------

    def _alarm_ack(self, cmd: commands.AlarmAck) -> dict[str, Any]:
        found = self.outbox.lookup(cmd.event_id)
        if found is None or found[0] != "alarm.panic":
            raise rejected(cmd, "unknown_event", f"本站没有报警 {cmd.event_id}",
                           f"no alarm {cmd.event_id} at this station")
        self.indicator.acknowledged(cmd.event_id)
        if self.loudspeaker:
            self.loudspeaker.silence_siren()
            self.loudspeaker.prompt("alarm_received")
        return {"event_id": cmd.event_id}

    def _state_get(self, _cmd: commands.StateGet) -> dict[str, Any]:
        self.uplink.request_state()
        return {}

    def _no_loudspeaker(self, cmd: commands.Command) -> dict[str, Any]:
        raise rejected(cmd, "audio_unavailable", "本站未启用喇叭",
                       "this station has no loudspeaker (audio.enabled = false)")

    def _camera(self, cmd: commands.CameraArm | commands.CameraDisarm) -> dict[str, Any]:
        if self.camera is None:
            raise rejected(cmd, "invalid_command", "本站摄像头未启用",
                           "the camera is not enabled at this station")
        self.camera.arming.set(isinstance(cmd, commands.CameraArm), cmd.for_s)
        return {"armed": self.camera.arming.armed(), "for_s": cmd.for_s}

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
        """Drive a simulated button from the electrical side, as a finger would, and
        answer with the events it raised once they are stored (or say why not)."""
        if not is_simulated(self.pin_factory):
            raise ControlError("buttons can only be pressed from software with "
                               "pins.factory = 'mock'; press the real button")
        from edge.sim.presses import press  # the simulator only, chosen by config

        futures: list[Future[Stored]] = []
        with self._raised:
            self._collect.append(futures)
        try:
            done, hold = press(self.pin_factory, self.config.pins, self.config.buttons,
                               request, self._stopping)
            with self._raised:  # a held press fires on gpiozero's thread: let it land
                self._raised.wait_for(lambda: len(futures) >= done, timeout=1.0)
        finally:
            with self._raised:
                self._collect.remove(futures)
        if not futures:
            raise ControlError(
                f"{done} press(es) of {hold} s raised no event: hold the {request.button} "
                f"button at least buttons.{request.button}_hold_s")
        events = []
        for future in futures:
            try:
                stored = future.result(timeout=30)
            except Exception as exc:  # not stored: the township hears of an alarm anyway
                raise ControlError(f"an event of this press was not stored: {exc}") from exc
            events.append({"id": stored.id, "seq": stored.seq, "type": stored.type})
        return {"pressed": done, "button": request.button, "hold_s": hold, "events": events}

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
        lock_file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                              "a")  # held for life
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
