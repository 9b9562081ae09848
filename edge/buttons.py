"""The station's physical buttons, read with gpiozero.

The panic button must be held for `panic_hold_s` (default 0.3 s) so that a brush
against it does not page the township; 0 fires on press.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpiozero import Button

from edge.config import ButtonsSection, PinsSection


def _button(pin: int, hold_s: float, pins: PinsSection, timings: ButtonsSection,
            factory: Any, action: Callable[[float], None]) -> Any:
    button = Button(pin, pull_up=pins.pull_up, bounce_time=timings.bounce_s or None,
                    hold_time=hold_s or 1.0, pin_factory=factory)
    if hold_s > 0:
        button.when_held = lambda: action(hold_s)
    else:
        button.when_pressed = lambda: action(0.0)
    return button


class StationButtons:
    def __init__(self, factory: Any, pins: PinsSection, timings: ButtonsSection, *,
                 on_panic: Callable[[float], None],
                 on_broadcast: Callable[[float], None]) -> None:
        self.panic = _button(pins.panic, timings.panic_hold_s, pins, timings, factory, on_panic)
        self.broadcast = _button(pins.broadcast, timings.broadcast_hold_s, pins, timings,
                                 factory, on_broadcast)

    def close(self) -> None:
        self.panic.close()
        self.broadcast.close()
