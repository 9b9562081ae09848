"""The loudspeaker amplifier's power relay (gpiozero OutputDevice).

The amplifier hums and draws power when idle, so it is switched on only to play: on,
then `warm_up_s` before the first sample (amplifiers thump and mute while they settle),
off again when the player has been idle for its idle timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from gpiozero import OutputDevice


class Amplifier:
    def __init__(self, pin: int, factory: Any, warm_up_s: float) -> None:
        self._relay = OutputDevice(pin, active_high=True, initial_value=False,
                                   pin_factory=factory)
        self._warm_up_s = warm_up_s
        self._stop = threading.Event()

    @property
    def is_on(self) -> bool:
        return bool(self._relay.value)

    def power_up(self) -> None:
        """Switch on; if it was off, wait out the warm-up (cut short by close())."""
        if self.is_on:
            return
        self._relay.on()
        if self._warm_up_s:
            self._stop.wait(self._warm_up_s)

    def power_down(self) -> None:
        self._relay.off()

    def close(self) -> None:
        self._stop.set()
        self._relay.close()

