"""The station's physical buttons, read with gpiozero.

The panic button must be held for `panic_hold_s` (default 0.3 s) so that a brush
against it does not page the township; 0 fires on press. Each press raises an event;
whoever listens (the simulator's `press`) hears of each one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from gpiozero import Button, DigitalInputDevice

from edge.config import ButtonsSection, PinsSection
from edge.store.outbox import Stored

Raised = Future[Stored]


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
                 on_panic: Callable[[float], Raised],
                 on_broadcast: Callable[[float], Raised],
                 on_broadcast_released: Callable[[], None]) -> None:
        self._listeners: list[Callable[[Raised], None]] = []
        self.panic = _button(pins.panic, timings.panic_hold_s, pins, timings, factory,
                             lambda held_s: self._raised(on_panic(held_s)))
        self.broadcast = _button(pins.broadcast, timings.broadcast_hold_s, pins, timings,
                                 factory, lambda held_s: self._raised(on_broadcast(held_s)),
                                 on_broadcast_released)

    def listen(self, listener: Callable[[Raised], None]) -> None:
        """`listener` hears of every event a press raises, as the outbox's future."""
        self._listeners.append(listener)

    def _raised(self, future: Raised) -> None:
        for listener in self._listeners:
            listener(future)

    def close(self) -> None:
        self.panic.close()
        self.broadcast.close()
