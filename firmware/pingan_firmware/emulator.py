"""The emulated unit's GPIO lines, driven and read from outside QEMU (firmware/boot-test).

QEMU's qtest protocol runs beside TCG (`-accel tcg -qtest unix:PATH,server=on,wait=off`):
`set_irq_in` drives a device's GPIO input as a wire from a button would, `readl` reads
its registers as the CPU would. QMP finds the device's QOM path.

- `virt`: one PL061 at 0x09030000, 8 lines; line 3 is QEMU's power button. An input line
  reads what drives it (0 until driven): a button wired to ground with its pull-up is
  driven 1 at power-on, 0 while pressed. Its data register shows the output lines.
- `raspi3b`: QEMU 7.2's BCM2835 GPIO has no input lines (no qdev gpio-in) and no edge
  detection, but a write to GPSET/GPCLR sets a line's bit in GPLEV whatever the line's
  function (hw/gpio/bcm2835_gpio.c: `gpset`/`gpclr` change `lev` for every bit written,
  and only outputs raise their qemu_irq). So qtest's `writel` there is the finger: the
  level the guest's pinctrl-bcm2835 reads for an input line changes, and the kernel's GPIO
  character device shows it. No edge is raised: the guest sees a press only when it reads
  the line (a button held when the station starts; the selftest polls the level). Nothing
  models the pulls: every line reads 0 from reset until driven.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class EmulatorError(RuntimeError):
    pass


def _connect(path: Path, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Qmp:
    """QEMU's machine protocol: JSON lines, events interleaved with replies."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.sock = _connect(path, timeout_s)
        self.sock.settimeout(timeout_s)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise EmulatorError("QMP closed")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise EmulatorError(f"QMP {command}: {reply['error'].get('desc')}")
        return reply.get("return")

    def find(self, type_name: str, root: str = "/machine", depth: int = 4) -> str:
        """The QOM path of the first device of `type_name` under `root`."""
        for prop in self.execute("qom-list", path=root):
            kind = prop.get("type", "")
            if not kind.startswith("child<"):
                continue
            path = f"{root}/{prop['name']}"
            if kind == f"child<{type_name}>":
                return path
            if depth > 0:
                try:
                    return self.find(type_name, path, depth - 1)
                except LookupError:
                    pass
        raise LookupError(f"no {type_name} under {root}")

    def close(self) -> None:
        self.sock.close()


def parse_reply(line: str) -> int | None:
    """A qtest reply: `OK` (None), `OK 0x1f` (the value); `FAIL …` raises."""
    words = line.split()
    if not words or words[0] != "OK":
        raise EmulatorError(f"qtest: {line.strip() or 'no reply'}")
    return int(words[1], 16) if len(words) > 1 else None


class Qtest:
    """QEMU's qtest protocol: one command line, one reply line (IRQ lines skipped)."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        self.sock = _connect(path, timeout_s)
        self.sock.settimeout(timeout_s)
        self.file = self.sock.makefile("rwb")
        self.lock = threading.Lock()  # a finger and an eye may ask at once

    def command(self, line: str) -> int | None:
        with self.lock:
            self.file.write(line.encode() + b"\n")
            self.file.flush()
            while True:
                reply = self.file.readline().decode()
                if not reply:
                    raise EmulatorError(f"qtest closed after {line!r}")
                if not reply.startswith("IRQ"):
                    return parse_reply(reply)

    def readl(self, address: int) -> int:
        value = self.command(f"readl {address:#x}")
        assert value is not None
        return value

    def writel(self, address: int, value: int) -> None:
        self.command(f"writel {address:#x} {value:#x}")

    def set_irq_in(self, path: str, line: int, level: int) -> None:
        self.command(f"set_irq_in {path} unnamed-gpio-in {line} {level}")

    def close(self) -> None:
        self.sock.close()


class GpioLines(ABC):
    """One machine's GPIO chip as wires: drive an input, read a line's level.

    `edges`: whether the guest sees a driven change as an edge (an interrupt), as a
    button press on a unit would be seen; else only when it reads the level."""

    edges = True

    def __init__(self, qtest: Qtest, *, data_register: int, lines: int) -> None:
        self.qtest, self.data_register, self.lines = qtest, data_register, lines

    def drive(self, line: int, level: bool) -> None:
        if not 0 <= line < self.lines:
            raise EmulatorError(f"line {line}: the chip has lines 0-{self.lines - 1}")
        self._drive(line, level)

    @abstractmethod
    def _drive(self, line: int, level: bool) -> None: ...

    def level(self, line: int) -> bool:
        return bool(self.qtest.readl(self.data_register + 4 * (line // 32)) >> (line % 32) & 1)


class Pl061Lines(GpioLines):
    """An input line of QEMU's PL061 reads what drives it (qdev gpio-in), with an edge."""

    def __init__(self, qtest: Qtest, path: str, *, data_register: int, lines: int) -> None:
        super().__init__(qtest, data_register=data_register, lines=lines)
        self.path = path

    def _drive(self, line: int, level: bool) -> None:
        self.qtest.set_irq_in(self.path, line, int(level))


class Bcm2835Lines(GpioLines):
    """QEMU 7.2's BCM2835 GPIO: a line's level set through GPSET/GPCLR (see above)."""

    edges = False

    def _drive(self, line: int, level: bool) -> None:
        bank = 4 * (line // 32)
        register = BCM2837_GPIO_BASE + (GPSET0 if level else GPCLR0) + bank
        self.qtest.writel(register, 1 << (line % 32))


PL061_BASE = 0x09030000  # QEMU virt's memory map (hw/arm/virt.c, VIRT_GPIO)
BCM2837_GPIO_BASE = 0x3F200000  # the Pi 3's peripherals at 0x3f000000, GPIO at +0x200000
GPSET0, GPCLR0, GPLEV0 = 0x1C, 0x28, 0x34  # each with its bank-1 register 4 bytes on


def pl061(qtest: Qtest, qmp: Qmp) -> Pl061Lines:
    """QEMU virt's PL061: data register at +0x3fc (address bits 9:2 mask every line)."""
    return Pl061Lines(qtest, qmp.find("pl061"), data_register=PL061_BASE + 0x3FC, lines=8)


def bcm2835_gpio(qtest: Qtest) -> Bcm2835Lines:
    """The Pi 3's GPIO under QEMU 7.2: 54 lines, levels in GPLEV0/1, set by GPSET/GPCLR."""
    return Bcm2835Lines(qtest, data_register=BCM2837_GPIO_BASE + GPLEV0, lines=54)
