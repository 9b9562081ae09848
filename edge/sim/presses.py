"""Buttons pressed from software: the simulator's finger on a mock pin.

`pingan-edge press` drives the button's pin electrically, so the press goes through the
same gpiozero button, debounce and hold time as a real one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge.config import ButtonsSection, PinsSection
from edge.unit.control import Press


def press(factory: Any, pins: PinsSection, timings: ButtonsSection, request: Press,
          stopping: threading.Event) -> tuple[int, float]:
    """Press and release `request.count` times; returns (presses done, hold in seconds).
    A hold not given is the configured hold time plus a margin, so each press fires."""
    pin = factory.pin(pins.panic if request.button == "panic" else pins.broadcast)
    configured = timings.panic_hold_s if request.button == "panic" else timings.broadcast_hold_s
    hold = request.hold_s if request.hold_s is not None else (
        round(configured + 0.15, 3) if configured else 0.0)
    down, up = ((pin.drive_low, pin.drive_high) if pins.pull_up
                else (pin.drive_high, pin.drive_low))
    done = 0
    for i in range(request.count):
        if stopping.is_set():
            break
        down()
        if hold:
            time.sleep(hold)
        up()
        done += 1
        if request.interval_s and i + 1 < request.count:
            time.sleep(request.interval_s)
    return done, hold
