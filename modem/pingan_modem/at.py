"""The modem's AT port: commands with timeouts, unsolicited result codes kept apart.

The port is opened by URL (`serial_for_url`): `/dev/ttyUSB2` on a unit, a pseudo-terminal
in the tests, `rfc2217://` or `socket://` for a modem elsewhere. One reader thread
(`modem-reader`) reads every byte and sorts lines: the reply to the one command in
flight, or an unsolicited result code (URC) handed to `on_urc`, so a `+CMTI` arriving in
the middle of `AT+CSQ` is neither lost nor mistaken for the reply. `on_urc` runs on the
reader thread and must only queue.

Bytes from the modem are never trusted. Each line is decoded as UTF-8 with replacement
(`LineReader`), a line longer than `MAX_LINE` is dropped whole, and a line counts as
unsolicited when it is a known notice of any vendor (pingan_modem/profiles.py) or merely
looks like one (`^…`, or `+XXX:` other than the answer asked for), so another vendor's
status lines never become a reply. Nothing the modem sends can end the reader.
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

from pingan_modem import profiles
from pingan_modem.log import log

logger = logging.getLogger("pingan_modem")

FINAL_OK = "OK"
_FINAL_ERROR = re.compile(
    r"^(ERROR|\+CM[ES] ERROR:.*|NO CARRIER|COMMAND NOT SUPPORT|TOO MANY PARAMETERS)$")
# 27.007 / 27.005 notices: always unsolicited, whatever command is in flight.
_URC_STANDARD = ("RDY", "POWERED DOWN", "NORMAL POWER DOWN", "+CMTI:", "+CDSI:", "+CDS:",
                 "+CMT:", "+CBM:", "+CPIN:", "SMS DONE", "PB DONE", "+CFUN:", "+CGEV:",
                 "+CREG:", "+CEREG:", "+CGREG:", "+CUSD:", "+CRING:", "RING", "+CLIP:",
                 "+CTZV:", "+CTZE:", "+CIEV:")
_URC_ALWAYS = tuple(sorted(set(_URC_STANDARD) | set(profiles.UNSOLICITED)))
# Any vendor's status line looks like one of these.
_LOOKS_UNSOLICITED = re.compile(r"^(\^|\+[A-Za-z0-9][A-Za-z0-9 _-]*:)")
# With AT+CREG=1 the URC is `+CREG: <stat>`, the answer to `AT+CREG?` `+CREG: <n>,<stat>`.
_REG_URC = re.compile(r"^\+C(E|G)?REG: *\d+$")
_MAX_REPLY_LINES = 256  # a babbling modem must not grow one reply without bound
# The longest line a modem answers with is a +CMGR PDU (~360 hex digits); anything much
# longer is junk and dropped whole.
MAX_LINE = 1024
# URCs whose PDU follows on the next line.
_TWO_LINE = ("+CDS:", "+CMT:")
_COMMAND = re.compile(r"AT[ -~]{0,200}")
_HEX = re.compile(r"[0-9A-Fa-f]{0,1000}")
_PDU = re.compile(r"[0-9A-Fa-f]{2,1000}")
_LINE_END = re.compile(rb"[\r\n]")


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


class Prompt:
    """The `> ` the modem sends when it wants the body of AT+CMGS."""


PROMPT = Prompt()


class LineReader:
    """Bytes from the modem → lines (UTF-8, undecodable bytes replaced) and prompts.

    Lines end at CR or LF; empty ones are skipped. A line longer than `max_line` is
    dropped whole (counted in `dropped`) and the buffer never holds more than that."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._skipping = False
        self.dropped = 0

    def feed(self, chunk: bytes) -> list[str | Prompt]:
        self._buf += chunk
        buf = self._buf
        out: list[str | Prompt] = []
        while buf:
            if not self._skipping and buf[:2] == b"> ":
                del buf[:2]
                out.append(PROMPT)
                continue
            end = _LINE_END.search(buf)
            if end is None:
                if len(buf) > self._max:  # no line end in sight: junk
                    if not self._skipping:
                        self.dropped += 1
                    self._skipping = True
                    buf.clear()
                break
            raw = bytes(buf[:end.start()])
            del buf[:end.start() + 1]
            if self._skipping:
                self._skipping = False  # the tail of a line already dropped
                continue
            if len(raw) > self._max:
                self.dropped += 1
                continue
            line = raw.decode("utf-8", "replace").strip()
            if line:
                out.append(line)
        return out


def unsolicited(line: str) -> bool:
    """A line that is, or looks like, a notice the modem sends on its own."""
    return line.startswith(_URC_ALWAYS) or _LOOKS_UNSOLICITED.match(line) is not None


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
    m = re.match(r"AT([+$^%#][A-Z0-9]+)", command.upper())
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
        self._lines = LineReader()
        self.error: str | None = None  # why the reader stopped, if the port failed
        self.echoes = 0  # commands the modem echoed back (echo is on after a reset)
        self.reader_errors = 0
        self._reader = threading.Thread(target=self._read_loop, name="modem-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._reader.is_alive()

    @property
    def dropped(self) -> int:
        """Over-long lines dropped as junk."""
        return self._lines.dropped

    def close(self) -> None:
        self._closing.set()
        self._reader.join(1.0)
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.close()

    def command(self, command: str, timeout: float = 5.0, data: str | None = None, *,
                expect: str | None = None,
                before_data: Callable[[], None] | None = None) -> list[str]:
        """Send `command`, return the lines of its reply (without the final OK).

        `expect` is the prefix of the answer when it is not the command's own (AT+CICCID
        is answered `+ICCID:`). With `data`, wait for the `> ` prompt, call
        `before_data`, send `data` and Ctrl-Z (AT+CMGS)."""
        if not _COMMAND.fullmatch(command) or (data is not None and not _HEX.fullmatch(data)):
            raise AtError(command, "not sent: not a printable ASCII command")
        if not self._lock.acquire(timeout=timeout):
            raise AtTimeout(f"{command}: the port is busy with another command")
        try:
            pending = _Pending(command, expect or _reply_prefix(command), prompt=data is not None)
            with self._state:
                self._pending = pending
            deadline = time.monotonic() + timeout
            self._write(command + "\r")
            if data is not None:
                if not self._wait(pending.prompted, pending, deadline):
                    self._write("\x1b")  # ESC abandons the message body
                    raise AtTimeout(f"{command}: no '> ' prompt within {timeout} s")
                if pending.final is None:
                    if before_data is not None:
                        before_data()
                    self._write(data + "\x1a")
                else:  # answered before the prompt: the body was never sent
                    self._write("\x1b")  # in case a prompt is on its way after all
                    if pending.final == FINAL_OK:
                        raise AtError(command, "OK before the '> ' prompt: not sent")
            if not self._wait(pending.done, pending, deadline):
                raise AtTimeout(f"{command}: no reply within {timeout} s")
            if pending.final != FINAL_OK:
                raise AtError(command, pending.final or "")
            return pending.lines
        finally:
            with self._state:
                self._pending = None
            self._lock.release()

    def cancel_prompt(self) -> None:
        """ESC: a modem left waiting for an SMS body (its host died mid-send) returns to
        commands. Harmless otherwise."""
        with self._lock:
            self._write("\x1b")

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
            try:
                for item in self._lines.feed(chunk):
                    if isinstance(item, Prompt):
                        with self._state:
                            if self._pending is not None:
                                self._pending.prompted.set()
                    elif awaiting_pdu is not None and _PDU.fullmatch(item):
                        self._urc(Urc(awaiting_pdu, item))
                        awaiting_pdu = None
                    else:
                        if awaiting_pdu is not None:  # no PDU after all: not swallowed
                            self._urc(Urc(awaiting_pdu))
                        awaiting_pdu = self._line(item)
            except Exception as exc:  # nothing the modem sends may end the reader
                self.reader_errors += 1
                awaiting_pdu = None
                log(logger, "error", "modem.reader_error", error=repr(exc)[:200],
                    action="a line from the modem could not be sorted; it was skipped")

    def _line(self, line: str) -> str | None:
        """Sort one line; returns the header of a two-line URC whose PDU comes next."""
        with self._state:
            pending = self._pending
            if pending is not None and not pending.done.is_set():
                if line == pending.command:
                    self.echoes += 1  # echo (ATE0 not yet, or no longer, in effect)
                    return None
                if line == FINAL_OK or _FINAL_ERROR.match(line):
                    pending.final = line
                    pending.done.set()
                    return None
                mine = pending.prefix and line.startswith(pending.prefix) \
                    and not _REG_URC.match(line)
                if mine or not unsolicited(line):
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
