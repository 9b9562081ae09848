"""Buttons pressed from software: the simulator's finger on a mock pin.

`pingan-edge press` sends a `press` request to the station's control socket; this part
answers it. It drives the button's pin electrically, so the press goes through the same
gpiozero button, debounce and hold time as a real one, and answers with the events the
press raised once the outbox has stored them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Annotated, Any, Literal

import msgspec
from gpiozero.pins.mock import MockFactory

from edge.station import Station
from edge.store.outbox import Stored
from edge.unit.control import ControlError


class Press(msgspec.Struct, tag_field="op", tag="press", forbid_unknown_fields=True):
    button: Literal["panic", "broadcast"]
    hold_s: Annotated[float, msgspec.Meta(ge=0, le=30)] | None = None
    count: Annotated[int, msgspec.Meta(ge=1, le=100000)] = 1
    interval_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


class Presses:
    """The `press` request of one station's control socket."""

    def __init__(self, station: Station) -> None:
        self._factory = station.pin_factory
        self._pins = station.config.pins
        self._timings = station.config.buttons
        self._stopping = threading.Event()
        # One request at a time: each collects the events its own presses raised.
        self._one = threading.Lock()
        self._raised = threading.Condition()
        self._collect: list[Future[Stored]] | None = None
        station.buttons.listen(self._heard)
        station.control.register(Press, self.press)

    def close(self) -> None:
        """Ends a burst of presses in progress (the station is stopping)."""
        self._stopping.set()

    def _heard(self, future: Future[Stored]) -> None:
        with self._raised:
            if self._collect is not None:
                self._collect.append(future)
                self._raised.notify_all()

    def press(self, request: Press) -> dict[str, Any]:
        if not isinstance(self._factory, MockFactory):
            raise ControlError("buttons can only be pressed from software with "
                               "pins.factory = 'mock'; press the real button")
        with self._one:
            futures: list[Future[Stored]] = []
            with self._raised:
                self._collect = futures
            try:
                done, hold = self._drive(request)
                with self._raised:  # a held press fires on gpiozero's thread: let it land
                    self._raised.wait_for(lambda: len(futures) >= done, timeout=1.0)
            finally:
                with self._raised:
                    self._collect = None
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

    def _drive(self, request: Press) -> tuple[int, float]:
        """Press and release `request.count` times; returns (presses done, hold in
        seconds). A hold not given is the configured hold time plus a margin, so each
        press fires."""
        pins, timings = self._pins, self._timings
        pin = self._factory.pin(pins.panic if request.button == "panic" else pins.broadcast)
        configured = (timings.panic_hold_s if request.button == "panic"
                      else timings.broadcast_hold_s)
        hold = request.hold_s if request.hold_s is not None else (
            round(configured + 0.15, 3) if configured else 0.0)
        down, up = ((pin.drive_low, pin.drive_high) if pins.pull_up
                    else (pin.drive_high, pin.drive_low))
        done = 0
        for i in range(request.count):
            if self._stopping.is_set():
                break
            down()
            if hold:
                time.sleep(hold)
            up()
            done += 1
            if request.interval_s and i + 1 < request.count:
                time.sleep(request.interval_s)
        return done, hold
