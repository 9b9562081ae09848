"""What the station does with an alarm: raise it (stored, and so on its way to the
township), show and sound it to the staff, and hear back from the township.

    blinking LED, the siren       raised, not yet at the township
    steady LED, "alarm sent"      delivered (the broker's PUBACK)
    flashing LED, "received"      acknowledged by a duty officer (`alarm.ack`)
    "saved, link down"            stored while the uplink is down: sent when it returns

An alarm the outbox cannot store is still sent, from memory. Nothing here waits for the
loudspeaker: the siren and the prompts are only queued to its player.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from concurrent.futures import Future
from typing import Any, Protocol

from gpiozero import LED

from edge.config import Config
from edge.contract import commands
from edge.contract.events import AlarmPanic, PanicPayload, encode, text
from edge.link.dispatch import Handlers
from edge.logs import log
from edge.store.outbox import Outbox, OutboxFull, Stored
from edge.store.recorder import Recorder
from edge.unit.indicator import AlarmIndicator

FEEDBACK_WAIT_S = 0.05
logger = logging.getLogger("edge.station")


class Sounder(Protocol):
    """The loudspeaker, as an alarm uses it."""

    def siren(self) -> None: ...

    def silence_siren(self) -> list[str]: ...

    def prompt(self, name: str) -> None: ...


class Link(Protocol):
    """The uplink, as an alarm uses it."""

    @property
    def connected(self) -> bool: ...

    def publish_volatile(self, stored: Stored) -> None: ...


class Alarm:
    def __init__(self, config: Config, pin_factory: Any, *, recorder: Recorder,
                 outbox: Outbox, link: Link, sounder: Sounder | None) -> None:
        self._led = LED(config.pins.alarm_led, pin_factory=pin_factory)
        self.indicator = AlarmIndicator(self._led, config.indicator.ack_display_s)
        self._recorder = recorder
        self._outbox = outbox
        self._link = link
        self._sounder = sounder
        # Alarms raised whose siren is not yet asked for: event id → delivered meanwhile.
        # See raise_alarm and delivered; held only for a dict operation, never while the
        # loudspeaker is called, so the threads that send alarms never wait for audio.
        self._before_siren: dict[str, bool] = {}
        self._before_siren_lock = threading.Lock()

    def register(self, handlers: Handlers) -> None:
        handlers.register(commands.AlarmAck, self._ack)

    def start(self) -> None:
        """Alarms stored but not yet delivered (before a restart) blink again."""
        for event_id in self._outbox.pending_ids("alarm.panic"):
            self.indicator.raised(event_id)

    def close(self) -> None:
        self._led.close()

    def raise_alarm(self, source: str, held_s: float) -> Future[Stored]:
        event = AlarmPanic(payload=PanicPayload(source=source, held_s=held_s),  # type: ignore[arg-type]
                           **self._recorder.identity())
        # Its PUBACK may come before its siren is asked for (the outbox writer sends a
        # lone alarm itself): "alarm sent" must still follow the siren, so until then a
        # delivery is only noted here, and said below (see delivered).
        with self._before_siren_lock:
            self._before_siren[event.id] = False
        try:
            future = self._recorder.record(event)
            # What staff see and hear (the LED's blink thread, the siren, a log line)
            # waits until the alarm is stored, and so handed to the uplink: Python runs
            # one thread at a time, and this work must not compete with the alarm on its
            # way. A slow card holds it back FEEDBACK_WAIT_S at most; nobody notices 50 ms.
            concurrent.futures.wait([future], timeout=FEEDBACK_WAIT_S)
            self.indicator.raised(event.id)
            # Info, not warning: the outbox keeps the alarm itself; as a warning it was also
            # appended and synced to warnings.log on the card (a journal commit) per press.
            log(logger, "info", "alarm.raised", id=event.id, source=source)
            if self._sounder:
                self._sounder.siren()
        finally:
            with self._before_siren_lock:
                delivered = self._before_siren.pop(event.id)
        if delivered and self._sounder:
            # Delivered before its siren was asked for: said now, queued behind the siren
            # (the player plays the higher level first; a prompt never cuts in).
            self._sounder.prompt("alarm_sent")
        # After the siren, on whichever thread stores it.
        future.add_done_callback(lambda f: self._kept(event, f))
        return future

    def _kept(self, event: AlarmPanic, future: Future[Stored]) -> None:
        exc = future.exception()
        if exc is None:
            if self._sounder and not self._link.connected:
                self._sounder.prompt("alarm_saved_link_down")
        elif not isinstance(exc, OutboxFull):
            # Not durable, but the township must still hear of it: send it from memory.
            self._link.publish_volatile(Stored(0, event.id, "alarm.panic", event.priority,
                                               encode(event)))

    def delivered(self, stored: Stored) -> None:
        """On the uplink's network thread, or the outbox writer's (a direct send whose
        PUBACK beat publish() returning): never waits for the press thread or audio."""
        if stored.type != "alarm.panic":
            return
        self.indicator.delivered(stored.id)
        with self._before_siren_lock:
            early = stored.id in self._before_siren
            if early:  # its siren is not asked for yet: raise_alarm says it after
                self._before_siren[stored.id] = True
        if self._sounder and not early:
            self._sounder.prompt("alarm_sent")
        log(logger, "info", "alarm.delivered", id=stored.id, seq=stored.seq)

    def _ack(self, cmd: commands.AlarmAck) -> dict[str, Any]:
        """The township's duty officer has it: the LED and a prompt say so, the siren stops."""
        found = self._outbox.lookup(cmd.event_id)
        if found is None or found[0] != "alarm.panic":
            raise commands.rejected(cmd, "unknown_event", text(
                f"本站没有报警 {cmd.event_id}", f"no alarm {cmd.event_id} at this station"))
        self.indicator.acknowledged(cmd.event_id)
        if self._sounder:
            self._sounder.silence_siren()
            self._sounder.prompt("alarm_received")
        return {"event_id": cmd.event_id}
