"""The one seam to GPIO hardware: a gpiozero pin factory chosen by config.

`mock` is gpiozero's own MockFactory (simulator and tests); the others drive real pins
on a Pi. Built once in the wiring module and passed to every device; never set globally.
"""

from __future__ import annotations

import importlib
from typing import Any

_FACTORIES = {
    "mock": ("gpiozero.pins.mock", "MockFactory"),
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
}


class PinFactoryError(RuntimeError):
    """The configured pin factory cannot drive this machine's pins."""


def make_factory(name: str) -> Any:
    module_name, class_name = _FACTORIES[name]
    try:
        return getattr(importlib.import_module(module_name), class_name)()
    except Exception as exc:  # each backend fails differently off a Pi
        raise PinFactoryError(
            f"pins.factory = {name!r} is not usable here ({type(exc).__name__}: {exc}); "
            f"on a Pi install its library (e.g. python3-lgpio), elsewhere use 'mock'"
        ) from exc
