"""The one seam to GPIO hardware: a gpiozero pin factory chosen by config.

`mock` is gpiozero's own MockFactory (simulator and tests); the others drive real pins
on a Pi. Built once in the wiring module and passed to every device; never set globally.

`lgpio` opens the SoC's own GPIO chip, found by its label (the Pi's firmware GPIO
expander can come first as gpiochip0 on Debian's kernel), and knows the board from the
device tree: Debian's kernel runs on the upstream device trees, which the Pi firmware
gives no `/system/linux,revision`, and an arm64 /proc/cpuinfo has no `Revision` line, so
gpiozero alone would stop with "unable to locate Pi revision". A machine that is no Pi
(QEMU's `virt` with its PL061 chip, in the boot test) gets the 40-pin header's numbering:
pin N is line N of the chip.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

_FACTORIES = {
    "mock": ("gpiozero.pins.mock", "MockFactory"),
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
}

# The SoC's own GPIO chip, by the label the kernel gives it (upstream and Raspberry Pi
# kernels alike): Pi 3, 3+, Zero 2 W (BCM2837/RP3A0), then Pi 4, 400, CM4 (BCM2711).
SOC_CHIP_LABELS = ("pinctrl-bcm2835", "pinctrl-bcm2711")

# The upstream device trees' board compatibles, as the revision code gpiozero reads for
# the pin header (model and SoC; the firmware would also have said memory and maker).
PI_REVISIONS = {
    "raspberrypi,3-model-b": 0xA02082,
    "raspberrypi,3-model-b-plus": 0xA020D3,
    "raspberrypi,3-model-a-plus": 0x9020E0,
    "raspberrypi,model-zero-2-w": 0x902120,
    "raspberrypi,4-model-b": 0xC03111,
    "raspberrypi,400": 0xC03130,
    "raspberrypi,4-compute-module": 0xA03140,
}
# No Pi: a Pi 3 B's header, whose GPIO0-27 name lines 0-27 of the chip.
HEADER_ONLY_REVISION = 0xA02082


class PinFactoryError(RuntimeError):
    """The configured pin factory cannot drive this machine's pins."""


def soc_chip(labels: dict[int, str]) -> int:
    """The chip number to open, given each /dev/gpiochipN's label: the SoC's, else the
    lowest (a machine with one chip)."""
    for wanted in SOC_CHIP_LABELS:
        for number in sorted(labels):
            if labels[number] == wanted:
                return number
    if not labels:
        raise PinFactoryError("no GPIO chip (/dev/gpiochip*) on this machine")
    return min(labels)


def revision_from_compatible(compatible: bytes) -> int | None:
    """The revision code for a device tree's `compatible` (NUL-separated, most specific
    first), or None for a board that is not a supported Pi."""
    for name in compatible.split(b"\0"):
        code = PI_REVISIONS.get(name.decode(errors="replace"))
        if code is not None:
            return code
    return None


def board_revision(proc_dt: Path = Path("/proc/device-tree")) -> int:
    """The firmware's revision code if it gave one, else the board's from the device tree,
    else the header-only numbering of a machine that is no Pi."""
    from gpiozero.exc import PinUnknownPi
    from gpiozero.pins.local import get_pi_revision

    try:
        return int(get_pi_revision())
    except (PinUnknownPi, OSError):
        pass
    try:
        compatible = (proc_dt / "compatible").read_bytes()
    except OSError:
        compatible = b""
    return revision_from_compatible(compatible) or HEADER_ONLY_REVISION


def _chip_labels(dev: Path = Path("/dev")) -> dict[int, str]:
    """Each GPIO chip's label, asked of the chip itself."""
    labels: dict[int, str] = {}
    for path in dev.glob("gpiochip*"):
        number = path.name.removeprefix("gpiochip")
        if number.isdigit():
            labels[int(number)] = _label_via_ioctl(path)
    return labels


def _label_via_ioctl(path: Path) -> str:
    """GPIO_GET_CHIPINFO_IOCTL: the chip's name and label, without lgpio."""
    import fcntl
    import struct

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        buf = bytearray(32 + 32 + 4)
        fcntl.ioctl(fd, 0x8044B401, buf)  # _IOR(0xB4, 0x01, struct gpiochip_info)
        label: bytes = struct.unpack_from("32s", buf, 32)[0]
        return label.split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _lgpio_factory() -> Any:
    from gpiozero.pins.lgpio import LGPIOFactory

    class SocLGPIOFactory(LGPIOFactory):  # type: ignore[misc]
        """gpiozero's lgpio factory on the SoC's chip, knowing the board as above."""

        def _get_revision(self) -> int:
            return board_revision()

    return SocLGPIOFactory(chip=soc_chip(_chip_labels()))


def make_factory(name: str) -> Any:
    try:
        if name == "lgpio":
            return _lgpio_factory()
        module_name, class_name = _FACTORIES[name]
        return getattr(importlib.import_module(module_name), class_name)()
    except Exception as exc:  # each backend fails differently off a Pi
        raise PinFactoryError(
            f"pins.factory = {name!r} is not usable here ({type(exc).__name__}: {exc}); "
            f"on a Pi install its library (e.g. python3-lgpio), elsewhere use 'mock'"
        ) from exc
