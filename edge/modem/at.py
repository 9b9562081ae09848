"""The modem's AT port: commands with timeouts, unsolicited result codes kept apart.

The port is opened by URL (`serial_for_url`): `/dev/ttyUSB2` on a unit, a pseudo-terminal
in the tests, `rfc2217://` or `socket://` for a modem elsewhere. One reader thread
(`modem-reader`) reads every byte and sorts lines: the reply to the one command in
flight, or an unsolicited result code (URC) handed to `on_urc`, so a `+CMTI` arriving in
the middle of `AT+CSQ` is neither lost nor mistaken for the reply. `on_urc` runs on the
reader thread and must only queue.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import serial

from edge.logs import log

logger = logging.getLogger("edge.modem")

FINAL_OK = "OK"
_FINAL_ERROR = re.compile(r"^(ERROR|\+CM[ES] ERROR:.*|NO CARRIER|COMMAND NOT SUPPORT)$")
# Always unsolicited, whatever command is in flight.
_URC_ALWAYS = re.compile(
    r"^(RDY|POWERED DOWN|NORMAL POWER DOWN|\+CMTI:|\+CDSI:|\+CDS:|\+CMT:|\+QIND:|\+CPIN:"
    r"|SMS DONE|PB DONE|\+CFUN:|\+CGEV:|\+QUSIM:|\+CREG:|\+CEREG:|\+CGREG:)")
# With AT+CREG=1 the URC is `+CREG: <stat>`, the answer to `AT+CREG?` `+CREG: <n>,<stat>`.
_REG_URC = re.compile(r"^\+C(E|G)?REG: *\d+$")
_MAX_REPLY_LINES = 256  # a babbling modem must not grow one reply without bound
# URCs whose PDU follows on the next line.
_TWO_LINE = ("+CDS:", "+CMT:")


class AtError(RuntimeError):
    """The modem answered ERROR / +CME ERROR / +CMS ERROR; `final` is that line."""

    def __init__(self, command: str, final: str) -> None:
        super().__init__(f"{command} → {final}")
        self.final = final


class AtTimeout(TimeoutError):
    """No final result within the timeout: the modem may be hung."""


class PortGone(OSError):
    """The serial port failed or vanished (USB modem unplugged or re-enumerating)."""


@dataclass(frozen=True, slots=True)
class Urc:
    line: str
    pdu: str = ""


@dataclass
class _Pending:
    command: str
    prefix: str  # "+CSQ:" for AT+CSQ: lines with it are the reply, not a URC
    prompt: bool
    lines: list[str] = field(default_factory=list)
    final: str | None = None
    prompted: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def _reply_prefix(command: str) -> str:
    m = re.match(r"AT([+$^][A-Z0-9]+)", command.upper())
    return m.group(1) + ":" if m else ""


class AtChannel:
    def __init__(self, url: str, on_urc: Callable[[Urc], None], *, baudrate: int = 115200,
                 on_lost: Callable[[str], None] = lambda _why: None) -> None:
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.1,
                                               write_timeout=2.0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortGone(f"cannot open modem port {url}: {exc}") from exc
        self.url = url
        self._on_urc = on_urc
        self._on_lost = on_lost
        self._lock = threading.Lock()  # one command at a time
        self._state = threading.Lock()  # guards _pending
        self._pending: _Pending | None = None
        self._closing = threading.Event()
        self.error: str | None = None  # why the reader stopped, if the port failed
        self._reader = threading.Thread(target=self._read_loop, name="modem-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    def close(self) -> None:
        self._closing.set()
        self._reader.join(1.0)
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.close()

    def command(self, command: str, timeout: float = 5.0, data: str | None = None) -> list[str]:
        """Send `command`, return the lines of its reply (without the final OK).

        With `data`, wait for the `> ` prompt, send `data` and Ctrl-Z (AT+CMGS)."""
        if not self._lock.acquire(timeout=timeout):
            raise AtTimeout(f"{command}: the port is busy with another command")
        try:
            pending = _Pending(command, _reply_prefix(command), prompt=data is not None)
            with self._state:
                self._pending = pending
            deadline = time.monotonic() + timeout
            self._write(command + "\r")
            if data is not None:
                if not self._wait(pending.prompted, pending, deadline):
                    self._write("\x1b")  # ESC abandons the message body
                    raise AtTimeout(f"{command}: no '> ' prompt within {timeout} s")
                if pending.final is None:
                    self._write(data + "\x1a")
            if not self._wait(pending.done, pending, deadline):
                raise AtTimeout(f"{command}: no reply within {timeout} s")
            if pending.final != FINAL_OK:
                raise AtError(command, pending.final or "")
            return pending.lines
        finally:
            with self._state:
                self._pending = None
            self._lock.release()

    def _wait(self, event: threading.Event, pending: _Pending, deadline: float) -> bool:
        while not event.is_set():
            if pending.done.is_set():
                return True
            if not self._reader.is_alive():
                raise PortGone(self.error or "modem port closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event.wait(min(remaining, 0.1))
        return True

    def _write(self, text: str) -> None:
        try:
            self._port.write(text.encode("ascii"))
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise PortGone(f"modem port write failed: {exc}") from exc

    # --- the reader thread -----------------------------------------------------------

    def _read_loop(self) -> None:
        buf = b""
        awaiting_pdu: str | None = None
        while not self._closing.is_set():
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                # TypeError: pyserial's posix read after the device node went away.
                if not self._closing.is_set():
                    self.error = f"modem port read failed: {exc}"
                    log(logger, "warning", "modem.port_lost", url=self.url, error=str(exc),
                        action="check the modem's USB cable and power; it is reopened")
                    self._on_lost(self.error)
                return
            if not chunk:
                continue
            buf += chunk
            if len(buf) > 65536:  # a babbling port must not eat memory
                buf = buf[-4096:]
            while True:
                if buf.startswith(b"> ") or buf.startswith(b"\r\n> "):
                    buf = buf[buf.index(b"> ") + 2:]
                    with self._state:
                        if self._pending is not None:
                            self._pending.prompted.set()
                    continue
                end = buf.find(b"\n")
                if end < 0:
                    break
                line = buf[:end].decode("latin-1").strip()
                buf = buf[end + 1:]
                if not line:
                    continue
                if awaiting_pdu is not None:
                    self._urc(Urc(awaiting_pdu, line))
                    awaiting_pdu = None
                    continue
                awaiting_pdu = self._line(line)

    def _line(self, line: str) -> str | None:
        """Sort one line; returns the header of a two-line URC whose PDU comes next."""
        with self._state:
            pending = self._pending
            if pending is not None and not pending.done.is_set():
                if line == pending.command:
                    return None  # echo (ATE0 not yet in effect)
                if line == FINAL_OK or _FINAL_ERROR.match(line):
                    pending.final = line
                    pending.done.set()
                    return None
                mine = pending.prefix and line.startswith(pending.prefix) \
                    and not _REG_URC.match(line)
                if mine or not _URC_ALWAYS.match(line):
                    if len(pending.lines) < _MAX_REPLY_LINES:
                        pending.lines.append(line)
                    return None
        if line.startswith(_TWO_LINE):
            return line
        self._urc(Urc(line))
        return None

    def _urc(self, urc: Urc) -> None:
        try:
            self._on_urc(urc)
        except Exception:  # the reader must outlive a bad handler
            logger.exception("modem.urc_handler_failed")
