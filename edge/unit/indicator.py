"""The alarm LED: what staff see after pressing the panic button.

    fast blink (0.2 s on / 0.2 s off)   an alarm is not yet delivered to the township
    steady on                           delivered (PUBACK), not yet acknowledged
    short flash every 2 s               the township acknowledged it (for `ack_display_s`)
    slow blink (1 s on / 1 s off)       updating: the unit is about to reboot into a new
                                        release (from `update.rebooting` until it stops)
    off                                 nothing outstanding

An alarm outranks the update: a press while the unit is about to reboot blinks fast (it
is stored, and sent by whichever slot runs next).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

ACK_PERIOD_S = 2.0
UPDATING_S = 1.0  # on, then off, again and again
_SETTLED_MAX = 64


class Mode(StrEnum):
    IDLE = "idle"
    PENDING = "pending"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    UPDATING = "updating"


class AlarmIndicator:
    def __init__(self, led: Any, ack_display_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._led = led
        self._ack_display_s = ack_display_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._delivered: set[str] = set()
        self._acked_at: float | None = None
        self._updating = False
        self._shown = Mode.IDLE
        # Alarms delivered before `raised` was called for them, oldest first, bounded.
        self._settled: dict[str, None] = {}

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode()

    def raised(self, event_id: str) -> None:
        with self._lock:
            if event_id in self._settled:
                del self._settled[event_id]
                return  # delivered (or acknowledged) before this was called: see delivered
            self._pending.add(event_id)
            self._show()

    def delivered(self, event_id: str) -> None:
        with self._lock:
            if event_id not in self._pending:
                # The alarm is stored before the LED is told of it, so on a loaded unit its
                # PUBACK can come first: remember it, so the LED never blinks for it.
                self._remember_settled(event_id)
            self._pending.discard(event_id)
            self._delivered.add(event_id)
            self._show()

    def acknowledged(self, event_id: str) -> None:
        with self._lock:
            if event_id not in self._pending and event_id not in self._delivered:
                self._remember_settled(event_id)
            self._pending.discard(event_id)
            self._delivered.discard(event_id)
            self._acked_at = self._clock()
            self._shown = Mode.IDLE  # restart the acknowledged pattern on every ack
            self._show()

    def updating(self, on: bool = True) -> None:
        """The unit is going down to boot a new release (or, `on=False`, is not)."""
        with self._lock:
            self._updating = on
            self._show()

    def _remember_settled(self, event_id: str) -> None:
        self._settled[event_id] = None
        while len(self._settled) > _SETTLED_MAX:
            del self._settled[next(iter(self._settled))]

    def _mode(self) -> Mode:
        if self._pending:
            return Mode.PENDING
        if self._delivered:
            return Mode.DELIVERED
        if self._updating:
            return Mode.UPDATING
        if self._acked_at is not None and self._clock() - self._acked_at < self._ack_display_s:
            return Mode.ACKNOWLEDGED
        return Mode.IDLE

    def _show(self) -> None:
        mode = self._mode()
        if mode == self._shown:
            return
        self._shown = mode
        if mode is Mode.PENDING:
            self._led.blink(on_time=0.2, off_time=0.2)
        elif mode is Mode.DELIVERED:
            self._led.on()
        elif mode is Mode.ACKNOWLEDGED:
            # gpiozero stops after n flashes and leaves the LED off: no timer of our own.
            flashes = max(1, round(self._ack_display_s / ACK_PERIOD_S))
            self._led.blink(on_time=0.1, off_time=ACK_PERIOD_S - 0.1, n=flashes)
        elif mode is Mode.UPDATING:
            self._led.blink(on_time=UPDATING_S, off_time=UPDATING_S)
        else:
            self._led.off()
