"""The station's physical buttons, read with gpiozero: the panic button raises an alarm,
the broadcast button a `button.broadcast` event and push-to-talk while it is held.

The panic button must be held for `panic_hold_s` (default 0.3 s) so that a brush
against it does not page the township; 0 fires on press. Whoever listens (the
simulator's `press`) hears of each event a press raised.

A button already held down when the station starts (pressed while the unit rebooted for
an update, or restarted) is taken at once: gpiozero fires nothing for a pin that is
active when the device is made (no edge), so `start` looks, and the press it takes ends
at that button's release (the hold timer cannot raise it a second time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from gpiozero import Button, DigitalInputDevice

from edge.config import ButtonsSection, PinsSection
from edge.contract.events import ButtonBroadcast, ButtonPayload
from edge.logs import log
from edge.store.outbox import Stored
from edge.store.recorder import Recorder

Raised = Future[Stored]
logger = logging.getLogger("edge.station")


class Talk(Protocol):
    """The loudspeaker, as the broadcast button uses it."""

    def ptt_press(self) -> None: ...

    def ptt_release(self) -> None: ...


class _Press:
    """One button's presses: the gpiozero callbacks, and the press held at start."""

    def __init__(self, name: str, hold_s: float, action: Callable[[float], None],
                 released: Callable[[], None] | None) -> None:
        self.name = name
        self.hold_s = hold_s
        self._action = action
        self._released = released
        self._lock = threading.Lock()
        self._seen_edge = False  # a press (an edge) came after the device was made
        self._held_at_start = False  # taken by `take_if_held`, until its release

    def activated(self) -> None:
        with self._lock:
            self._seen_edge = True
        if self.hold_s <= 0:
            self._action(0.0)

    def held(self) -> None:
        with self._lock:
            if self._held_at_start:
                return  # the press already taken at start
        self._action(self.hold_s)

    def deactivated(self) -> None:
        with self._lock:
            self._held_at_start = False
            self._seen_edge = True
        if self._released is not None:
            self._released()

    def take_if_held(self, device: Any) -> bool:
        """At start: a button down since before the device existed is taken now."""
        with self._lock:
            if self._seen_edge or not device.is_active:
                return False
            self._held_at_start = True
        log(logger, "warning", "button.held_at_start", button=self.name,
            action="taken as a press now; if nobody holds it, check the button and its "
                   "wiring (a stuck button raises this at every start)")
        self._action(self.hold_s)
        return True


def _button(press: _Press, pin: int, pins: PinsSection, timings: ButtonsSection,
            factory: Any) -> Any:
    bounce = timings.bounce_s or None
    if press.hold_s > 0:
        button: Any = Button(pin, pull_up=pins.pull_up, bounce_time=bounce,
                             hold_time=press.hold_s, pin_factory=factory)
        button.when_held = press.held
    else:
        # Fires on press: no hold thread (gpiozero's polls ten times a second, and wakes
        # beside the alarm it should not compete with).
        button = DigitalInputDevice(pin, pull_up=pins.pull_up, bounce_time=bounce,
                                    pin_factory=factory)
    button.when_activated = press.activated
    button.when_deactivated = press.deactivated
    return button


class StationButtons:
    def __init__(self, factory: Any, pins: PinsSection, timings: ButtonsSection, *,
                 recorder: Recorder, raise_alarm: Callable[[str, float], Raised],
                 talk: Talk | None) -> None:
        self._factory = factory
        self._pins = pins
        self._timings = timings
        self._recorder = recorder
        self._raise_alarm = raise_alarm
        self._talk = talk
        self._listeners: list[Callable[[Raised], None]] = []
        self._devices: list[Any] = []

    def listen(self, listener: Callable[[Raised], None]) -> None:
        """`listener` hears of every event a press raises, as the outbox's future."""
        self._listeners.append(listener)

    def start(self) -> None:
        """The pins are claimed here: a button with a hold time has a gpiozero thread.
        A button held down already is taken now (see the module's docstring)."""
        pins, timings = self._pins, self._timings
        presses = [(_Press("panic", timings.panic_hold_s, self._panic, None), pins.panic),
                   (_Press("broadcast", timings.broadcast_hold_s, self._broadcast,
                           self._released), pins.broadcast)]
        self._devices = [_button(press, pin, pins, timings, self._factory)
                         for press, pin in presses]
        for (press, _pin), device in zip(presses, self._devices, strict=True):
            press.take_if_held(device)

    def close(self) -> None:
        for device in self._devices:
            device.close()

    def broadcast_pressed(self, held_s: float) -> Raised:
        return self._recorder.record(ButtonBroadcast(
            payload=ButtonPayload(button="broadcast", source="button", held_s=held_s),
            **self._recorder.identity()))

    def _panic(self, held_s: float) -> None:
        self._raised(self._raise_alarm("button", held_s))

    def _broadcast(self, held_s: float) -> None:
        self._raised(self.broadcast_pressed(held_s))
        if self._talk:
            self._talk.ptt_press()

    def _released(self) -> None:
        if self._talk:
            self._talk.ptt_release()

    def _raised(self, future: Raised) -> None:
        for listener in self._listeners:
            listener(future)
