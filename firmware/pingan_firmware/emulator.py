"""The emulated unit's GPIO lines, driven and read from outside QEMU (firmware/boot-test).

QEMU's qtest protocol runs beside TCG (`-accel tcg -qtest unix:PATH,server=on,wait=off`):
`set_irq_in` drives a device's GPIO input as a wire from a button would, `readl` reads
its registers as the CPU would. QMP finds the device's QOM path.

- `virt`: one PL061 at 0x09030000, 8 lines; line 3 is QEMU's power button. An input line
  reads what drives it (0 until driven): a button wired to ground with its pull-up is
  driven 1 at power-on, 0 while pressed. Its data register shows the output lines.
- `raspi3b`: QEMU 7.2's BCM2835 GPIO has outputs only (GPLEV shows the levels the guest
  set); it has no input lines and no edge detection, so no button can be pressed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
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

    def set_irq_in(self, path: str, line: int, level: int) -> None:
        self.command(f"set_irq_in {path} unnamed-gpio-in {line} {level}")

    def close(self) -> None:
        self.sock.close()


class GpioLines:
    """One machine's GPIO chip as wires: drive an input, read a line's level."""

    def __init__(self, qtest: Qtest, *, path: str | None, data_register: int,
                 lines: int) -> None:
        self.qtest, self.path, self.data_register, self.lines = qtest, path, data_register, lines

    def drive(self, line: int, level: bool) -> None:
        if self.path is None:
            raise EmulatorError("this machine's GPIO model has no input lines")
        if not 0 <= line < self.lines:
            raise EmulatorError(f"line {line}: the chip has lines 0-{self.lines - 1}")
        self.qtest.set_irq_in(self.path, line, int(level))

    def level(self, line: int) -> bool:
        return bool(self.qtest.readl(self.data_register + 4 * (line // 32)) >> (line % 32) & 1)


PL061_BASE = 0x09030000  # QEMU virt's memory map (hw/arm/virt.c, VIRT_GPIO)
BCM2837_GPIO_BASE = 0x3F200000  # the Pi 3's peripherals at 0x3f000000, GPIO at +0x200000
GPLEV0 = 0x34


def pl061(qtest: Qtest, qmp: Qmp) -> GpioLines:
    """QEMU virt's PL061: data register at +0x3fc (address bits 9:2 mask every line)."""
    return GpioLines(qtest, path=qmp.find("pl061"), data_register=PL061_BASE + 0x3FC, lines=8)


def bcm2835_gpio(qtest: Qtest) -> GpioLines:
    """The Pi 3's GPIO under QEMU 7.2: levels readable (GPLEV0/1), nothing to drive."""
    return GpioLines(qtest, path=None, data_register=BCM2837_GPIO_BASE + GPLEV0, lines=54)
