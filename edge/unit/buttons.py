"""The station's physical buttons, read with gpiozero: the panic button raises an alarm,
the broadcast button a `button.broadcast` event and push-to-talk while it is held.

The panic button must be held for `panic_hold_s` (default 0.3 s) so that a brush
against it does not page the township; 0 fires on press. Whoever listens (the
simulator's `press`) hears of each event a press raised.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from gpiozero import Button, DigitalInputDevice

from edge.config import ButtonsSection, PinsSection
from edge.contract.events import ButtonBroadcast, ButtonPayload
from edge.store.outbox import Stored
from edge.store.recorder import Recorder

Raised = Future[Stored]


class Talk(Protocol):
    """The loudspeaker, as the broadcast button uses it."""

    def ptt_press(self) -> None: ...

    def ptt_release(self) -> None: ...


def _button(pin: int, hold_s: float, pins: PinsSection, timings: ButtonsSection,
            factory: Any, action: Callable[[float], None],
            released: Callable[[], None] | None = None) -> Any:
    bounce = timings.bounce_s or None
    if hold_s > 0:
        button: Any = Button(pin, pull_up=pins.pull_up, bounce_time=bounce, hold_time=hold_s,
                             pin_factory=factory)
        button.when_held = lambda: action(hold_s)
    else:
        # Fires on press: no hold thread (gpiozero's polls ten times a second, and wakes
        # beside the alarm it should not compete with).
        button = DigitalInputDevice(pin, pull_up=pins.pull_up, bounce_time=bounce,
                                    pin_factory=factory)
        button.when_activated = lambda: action(0.0)
    if released is not None:
        button.when_deactivated = released
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
        """The pins are claimed here: a button with a hold time has a gpiozero thread."""
        pins, timings = self._pins, self._timings
        self._devices = [
            _button(pins.panic, timings.panic_hold_s, pins, timings, self._factory,
                    self._panic),
            _button(pins.broadcast, timings.broadcast_hold_s, pins, timings, self._factory,
                    self._broadcast, self._released)]

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
