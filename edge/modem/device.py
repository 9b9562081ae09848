"""The 4G modem as a part of the station: its state, SMS, and keeping it alive.

All modem I/O runs on one worker thread (`modem`) fed by a bounded queue, so nothing
else ever waits on the modem: `send_sms` queues and returns at once. The worker:

- opens the port (absent → problem `modem_absent`, retried with back-off); a modem left
  waiting for an SMS body by a host that died is sent ESC first;
- detects the model (`ATI`, `AT+CGMM`) and takes its profile (pingan_modem/profiles.py):
  ICCID commands tried in turn, the serving-cell command, the soft reset, where
  delivery reports are kept (the EC25 announces `+CDSI: "SM"` but stores in "SR");
- checks the SIM (not ready → `modem_sim`), sets PDU mode and the URCs it wants;
- polls signal, registration and operator every `modem.poll_s`; every value is
  validated and bounded (pingan_modem/signal.py);
- on any vendor's boot notice (`RDY`, `^SYSSTART`, ...) or its echo coming back (the
  modem restarted by itself) sets everything up again;
- on a command timeout climbs the recovery ladder: AT ping, the profile's soft reset and
  wait until the modem is ready (a boot notice, `+CPIN: READY`, or simply an answer to
  `AT`), then a power cycle through the relay on `pins.modem_power`; `modem_silent` only
  when none of that brings an answer, and the ladder is tried again with back-off.

An SMS is sent part by part (`SmsJob`): the sender hears just before a part's PDU goes
to the modem (`before_part`, after the `> ` prompt) and how each part ended
(`after_part`: the `+CMGS` reference, or the error and whether the part may have gone
anyway), so it can keep each part's state on disk.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from edge.config import ModemSection
from edge.contract.events import ModemReport
from edge.health import Health
from edge.logs import log
from pingan_modem import pdu, profiles, signal
from pingan_modem.at import AtChannel, AtError, AtTimeout, PortGone, Urc
from pingan_modem.profiles import PROFILES, Profile, detect

logger = logging.getLogger("edge.modem")

__all__ = ["PROFILES", "Modem", "PartResult", "Profile", "SmsJob", "detect"]

_QUEUE_MAX = 64
_PING_TRIES = 3
_PING_TIMEOUT_S = 2.0
_READY_PING_AFTER_S = 1.0  # after a reset, a modem may still answer before it goes down
_BOOT_DEBOUNCE_S = 2.0  # RDY, ^SYSSTART, echo back on: one restart, set up once
_PARTS_KEPT = 16  # incoming concatenated messages being reassembled
_PARTS_TTL_S = 600.0
_STORES = frozenset({"SM", "ME", "MT", "SR", "BM"})


@dataclass(frozen=True, slots=True)
class PartResult:
    """How one part of an SMS ended at the modem."""

    index: int  # 0-based
    ref: int | None = None  # the +CMGS message reference: the network accepted it
    error: str | None = None  # what went wrong, else None
    # The PDU may have reached the network although no +CMGS came back (the modem or
    # the station went away after the PDU was written): sending it again may duplicate.
    doubt: bool = False


@dataclass
class SmsJob:
    """One text to one number. Callbacks run on the modem thread and must be quick."""

    number: str
    text: str
    # The concatenation reference (0-255) the parts carry; None: the modem picks one.
    # A part sent again must carry the same one, so the phone joins it to the others.
    reference: int | None = None
    # 0-based indices of the parts to send, in order; None: all of them.
    parts: Sequence[int] | None = None
    on_start: Callable[[], None] = lambda: None
    # Just before a part's PDU is written: from now on it may reach the network.
    before_part: Callable[[int], None] = lambda _index: None
    after_part: Callable[[PartResult], None] = lambda _result: None
    # (message references, error): the references are one per part sent, in order.
    # A job stops at the first part that fails; the parts after it are not tried.
    on_done: Callable[[list[int], str | None], None] = lambda _refs, _err: None


@dataclass(frozen=True, slots=True)
class _Lost:
    chan: AtChannel
    why: str


@dataclass
class _Assembly:
    parts: dict[int, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


class Modem:
    def __init__(
        self,
        config: ModemSection,
        health: Health,
        *,
        power: Any | None = None,
        on_report: Callable[[pdu.StatusReport], None] = lambda _r: None,
        on_sms: Callable[[pdu.Incoming], None] = lambda _m: None,
    ) -> None:
        self._config = config
        self._health = health
        self._power = power  # a gpiozero OutputDevice driving the power relay, or None
        self.on_report = on_report
        self.on_sms = on_sms
        self.on_ready: Callable[[], None] = lambda: None  # set up (again): SMS can go
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_MAX)
        self._stop = threading.Event()
        self._ready_seen = threading.Event()  # a ready notice since the last reset
        self._chan: AtChannel | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._report = ModemReport(state="starting")
        self._profile = PROFILES["generic"]
        self._reference = int(time.time()) & 0xFF
        self._assembling: OrderedDict[tuple[str, int], _Assembly] = OrderedDict()
        self._retry_s = 1.0
        self._expect_boot = 0.0  # until then, a boot notice is our own reset's
        self._last_boot = -_BOOT_DEBOUNCE_S
        self._echoes = 0
        self.resets = 0
        self.failures = 0  # exceptions the modem thread survived (a bug if ever > 0)
        self._thread = threading.Thread(target=self._run, name="modem", daemon=True)

    # --- any thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        chan = self._chan
        if chan is not None:
            chan.close()  # a command in flight ends at once (PortGone), not at its timeout
        if self._thread.is_alive():
            self._thread.join(0.5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def report(self) -> ModemReport:
        with self._lock:
            return self._report

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def profile(self) -> Profile:
        return self._profile

    def send_sms(self, job: SmsJob) -> bool:
        """Queue `job`; False when the queue is full (the caller keeps it and retries)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _port_lost(self, chan: AtChannel, why: str) -> None:
        """On the reader thread: the port failed; the modem thread reopens it."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_Lost(chan, why))

    def _urc(self, urc: Urc) -> None:
        """On the reader thread: hand over and return."""
        if urc.line in profiles.READY_NOTICES:
            self._ready_seen.set()
        try:
            self._queue.put_nowait(urc)
        except queue.Full:
            log(logger, "warning", "modem.urc_dropped", line=urc.line[:80],
                action="the modem thread is behind; a delivery report may be missing")

    # --- the modem thread ------------------------------------------------------------

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                next_poll = self._step(next_poll)
            except Exception:  # this thread must outlive anything the modem does
                self.failures += 1
                logger.exception("modem.failed")
                self._ready = False
                self._stop.wait(self._backoff())

    def _step(self, next_poll: float) -> float:
        """One turn: (re)open, set up, poll when due, handle one queued item."""
        try:
            if self._chan is None and not self._open():
                self._stop.wait(self._backoff())
                return next_poll
            if not self._ready:
                self._setup()
                next_poll = 0.0
            if time.monotonic() >= next_poll:
                self._poll()
                next_poll = time.monotonic() + self._config.poll_s
            try:
                item = self._queue.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                return next_poll
            self._handle(item)
        except AtTimeout as exc:
            log(logger, "warning", "modem.timeout", error=str(exc),
                action="recovering: AT ping, then a soft reset, then a power cycle")
            try:
                self._recover()
            except PortGone as gone:
                self._gone(gone)
        except PortGone as exc:
            self._gone(exc)
        except AtError as exc:
            # A refused setup step: the modem answers, so try again after a pause.
            log(logger, "warning", "modem.setup_refused", error=str(exc)[:200],
                action="check the SIM and the modem model; retrying")
            self._ready = False
            self._stop.wait(self._backoff())
        return next_poll

    def _gone(self, exc: PortGone) -> None:
        if not self._stop.is_set():  # else: closed under a command by close()
            self._lost(str(exc))

    def _backoff(self) -> float:
        delay = self._retry_s
        self._retry_s = min(self._retry_s * 2, self._config.retry_max_s)
        return delay

    def _open(self) -> bool:
        try:
            self._chan = self._channel()
        except PortGone as exc:
            self._set_state("absent")
            self._health.set("modem_absent", f"找不到4G模块（{self._config.port}）",
                             f"no 4G modem at {self._config.port}: {exc}",
                             action="check the modem's USB cable and modem.port")
            return False
        self._health.clear("modem_absent")
        return True

    def _channel(self) -> AtChannel:
        holder: list[AtChannel] = []
        chan = AtChannel(self._config.port, self._urc, baudrate=self._config.baudrate,
                         on_lost=lambda why: self._port_lost(holder[0], why))
        holder.append(chan)
        return chan

    def _lost(self, why: str) -> None:
        if self._chan is not None:
            self._chan.close()
        self._chan = None
        self._ready = False
        self._set_state("absent")
        self._health.set("modem_absent", "4G模块已断开", f"the 4G modem went away: {why}",
                         action="check the modem's USB cable and power")

    def _at(self, command: str, timeout: float | None = None, data: str | None = None, *,
            expect: str | None = None, before_data: Callable[[], None] | None = None
            ) -> list[str]:
        if self._chan is None:
            raise PortGone("modem port not open")
        return self._chan.command(command, timeout or self._config.command_timeout_s, data,
                                  expect=expect, before_data=before_data)

    def _setup(self) -> None:
        if self._chan is not None:
            # ESC: a modem left waiting for an SMS body (by a host that died, or a reply
            # out of step) returns to commands. Then a quiet moment: whatever answer is
            # still on its way goes by as unsolicited instead of answering our next
            # command, which would put every reply after it out of step.
            self._chan.cancel_prompt()
            self._stop.wait(0.2)
        self._ping()
        self._at("ATE0")
        self._at("AT+CMEE=1")
        identity = self._at("ATI")
        cgmm: list[str] = []
        with contextlib.suppress(AtError):
            cgmm = self._at("AT+CGMM")
        self._profile = detect(identity + cgmm)
        model = signal.model(cgmm) or signal.model(identity)
        try:
            sim = signal.first(self._at("AT+CPIN?"), "+CPIN:")
        except AtError as exc:
            sim = exc.final
        if "READY" not in sim:
            shown = signal.printable(sim, 40)
            self._set_state("sim_locked", model=model)
            self._health.set("modem_sim", f"SIM卡不可用：{shown}", f"SIM card not usable: {shown}",
                             action="insert the SIM or remove its PIN lock")
            raise AtError("AT+CPIN?", shown)
        self._health.clear("modem_sim")
        self._at("AT+CMGF=0")  # PDU mode
        # Text-mode parameters too (first octet 49: report wanted, relative validity, 24 h,
        # UCS-2), in case anything ever sends in text mode; our PDUs set the same bits.
        self._at("AT+CSMP=49,167,0,8")
        self._at('AT+CPMS="SM","SM","SM"')
        # New SMS stored and announced (+CMTI); delivery reports directly (+CDS, ds=1).
        self._at("AT+CNMI=2,1,0,1,0")
        for urc_on in ("AT+CREG=1", "AT+CEREG=1"):
            with contextlib.suppress(AtError):
                self._at(urc_on)
        iccid = self._iccid()
        self._set_state("ok", model=model or self._profile.name, iccid=iccid)
        self._echoes = self._chan.echoes if self._chan is not None else 0
        self._ready = True
        self._retry_s = 1.0
        self._health.clear("modem_silent")
        log(logger, "info", "modem.ready", model=model, profile=self._profile.name,
            port=self._config.port)
        self.on_ready()

    def _iccid(self) -> str | None:
        """The profile's ICCID commands in turn (`COMMAND NOT SUPPORT` → the next one)."""
        for query in self._profile.iccid:
            try:
                found = signal.iccid(self._at(query.command, expect=query.reply))
            except AtError:
                continue
            if found:
                return found
        return None

    def _ping(self) -> None:
        """AT until it answers (an ERROR is an answer too); AtTimeout after three tries."""
        for attempt in range(_PING_TRIES):
            try:
                self._at("AT", min(_PING_TIMEOUT_S, self._config.command_timeout_s))
                return
            except AtError:
                return
            except AtTimeout:
                if attempt == _PING_TRIES - 1:
                    raise

    def _poll(self) -> None:
        csq = signal.first(self._at("AT+CSQ"), "+CSQ:")
        creg = cereg = None
        cops = ""
        with contextlib.suppress(AtError):
            creg = signal.registration(signal.first(self._at("AT+CREG?"), "+CREG:"), query=True)
        with contextlib.suppress(AtError):
            cereg = signal.registration(signal.first(self._at("AT+CEREG?"), "+CEREG:"),
                                        query=True)
        with contextlib.suppress(AtError):
            cops = signal.first(self._at("AT+COPS?"), "+COPS:")
        rsrp = rsrq = sinr = None
        cell, parser = self._profile.cell, self._profile.cell_parser
        if cell is not None and parser is not None:
            with contextlib.suppress(AtError):
                for line in self._at(cell.command, expect=cell.reply):
                    if line.startswith(cell.reply):
                        rsrp, rsrq, sinr = signal.CELL_PARSERS[parser](line)
                        if rsrp is not None:
                            break
        with self._lock:
            old = self._report
            self._report = ModemReport(
                state="ok", model=old.model, iccid=old.iccid,
                reg=signal.best_registration(creg, cereg), operator=signal.operator(cops),
                tech=signal.access_tech(cops), csq_dbm=signal.csq_dbm(csq),
                rsrp=rsrp, rsrq=rsrq, sinr=sinr)
        if self._chan is not None and self._chan.echoes > self._echoes:
            # ATE0 no longer in effect: the modem restarted without a notice we know.
            self._restarted("echo")

    def _set_state(self, state: str, **fields: Any) -> None:
        with self._lock:
            self._report = ModemReport(state=state, **fields)  # type: ignore[arg-type]

    def _handle(self, item: object) -> None:
        if isinstance(item, _Lost):
            if item.chan is self._chan:  # not one closed and reopened since
                raise PortGone(item.why)
            return
        if isinstance(item, Urc):
            self._on_urc(item)
        elif isinstance(item, SmsJob):
            self._send(item)

    def _restarted(self, how: str) -> None:
        """The modem restarted by itself: set it up again, once per restart (its boot
        notices and its echo coming back are all signs of the same one)."""
        now = time.monotonic()
        if now - self._last_boot < _BOOT_DEBOUNCE_S:
            return
        self._last_boot = now
        log(logger, "warning", "modem.reset_seen", how=how[:40],
            action="the modem restarted by itself; setting it up again")
        self.resets += 1
        self._ready = False

    def _on_urc(self, urc: Urc) -> None:
        line = urc.line
        now = time.monotonic()
        if line in profiles.BOOT_NOTICES:
            if now < self._expect_boot:
                self._expect_boot = 0.0  # our own reset: the ladder sets it up again
                self._last_boot = now
            else:
                self._restarted(line)
        elif line.startswith(("POWERED DOWN", "NORMAL POWER DOWN")):
            log(logger, "warning", "modem.powered_down", action="waiting for it to come back")
            self._ready = False
        elif line.startswith("+CDS:"):
            self._report_pdu(urc.pdu)
        elif line.startswith("+CDSI:"):
            self._stored_report(line)
        elif line.startswith("+CMTI:"):
            self._incoming(line)
        elif line.startswith(("+CREG:", "+CEREG:")):
            reg = signal.registration(line, query=False)
            if reg is not None:
                with self._lock:
                    self._report = _replace(self._report, reg=reg)

    def _report_pdu(self, pdu_hex: str) -> None:
        try:
            report = pdu.parse_status_report(pdu_hex)
        except pdu.PduError as exc:
            log(logger, "warning", "modem.bad_report", error=str(exc)[:200])
            return
        self.on_report(report)

    @staticmethod
    def _stored_at(line: str) -> tuple[str, int] | None:
        """`+CMTI: "SM",3` / `+CDSI: "SR",7` → ("SM", 3); None unless both are sane."""
        values = signal.fields(line)
        if len(values) < 2 or values[0].upper() not in _STORES:
            log(logger, "warning", "modem.bad_notice", line=signal.printable(line, 80))
            return None
        index = signal.integer(values[1], 0, 65535)
        if index is None:
            log(logger, "warning", "modem.bad_notice", line=signal.printable(line, 80))
            return None
        return values[0].upper(), index

    def _stored_report(self, line: str) -> None:
        where = self._stored_at(line)
        if where is None:
            return
        announced, index = where
        # The EC25 says "SM" but keeps the report in "SR": read where it really is.
        store = self._profile.report_store or announced
        try:
            self._at(f'AT+CPMS="{store}"')
            lines = self._at(f"AT+CMGR={index}")
            with contextlib.suppress(AtError):
                self._at(f"AT+CMGD={index}")
        except AtError as exc:
            log(logger, "warning", "modem.report_unreadable", store=store, index=index,
                error=str(exc)[:200])
            return
        finally:
            with contextlib.suppress(AtError):
                self._at('AT+CPMS="SM","SM","SM"')
        if len(lines) >= 2:
            self._report_pdu(lines[1])

    def _incoming(self, line: str) -> None:
        where = self._stored_at(line)
        if where is None:
            return
        index = where[1]
        try:
            lines = self._at(f"AT+CMGR={index}")
        except AtError as exc:
            log(logger, "warning", "modem.sms_unreadable", index=index, error=str(exc)[:200])
            return
        with contextlib.suppress(AtError):
            self._at(f"AT+CMGD={index}")  # a full SIM stops SMS altogether
        if len(lines) < 2:
            return
        try:
            message = pdu.parse_deliver(lines[1])
        except pdu.PduError as exc:
            log(logger, "warning", "modem.sms_malformed", error=str(exc)[:200])
            return
        whole = self._assemble(message)
        if whole is not None:
            self.on_sms(whole)

    def _assemble(self, message: pdu.Incoming) -> pdu.Incoming | None:
        """Parts of a concatenated SMS arrive in any order; hand over the whole text."""
        if message.part is None:
            return message
        reference, count, number = message.part
        key = (message.sender, reference)
        now = time.monotonic()
        for k in [k for k, a in self._assembling.items() if now - a.started > _PARTS_TTL_S]:
            del self._assembling[k]
        assembly = self._assembling.setdefault(key, _Assembly())
        assembly.parts[number] = message.text
        while len(self._assembling) > _PARTS_KEPT:
            self._assembling.popitem(last=False)
        if len(assembly.parts) < count:
            return None
        self._assembling.pop(key, None)
        text = "".join(assembly.parts[i] for i in sorted(assembly.parts))
        return pdu.Incoming(message.sender, text, None)

    def _send(self, job: SmsJob) -> None:
        if not self._ready:
            job.on_done([], "modem not ready")
            return
        reference = job.reference
        if reference is None:
            self._reference = (self._reference + 1) & 0xFF
            reference = self._reference
        try:
            parts = pdu.encode_submit(job.number, job.text, reference)
        except pdu.PduError as exc:
            job.on_done([], str(exc))
            return
        indices = list(range(len(parts)) if job.parts is None else job.parts)
        job.on_start()
        refs: list[int] = []
        for index in indices:
            if not 0 <= index < len(parts):
                job.on_done(refs, f"no part {index + 1} of {len(parts)}")
                return
            written: list[bool] = []

            def before(index: int = index, written: list[bool] = written) -> None:
                written.append(True)
                job.before_part(index)

            part = parts[index]
            try:
                lines = self._at(f"AT+CMGS={part.length}", self._config.sms_timeout_s,
                                 data=part.hex, before_data=before)
            except AtError as exc:  # refused: this part did not go
                job.after_part(PartResult(index, error=exc.final[:120]))
                job.on_done(refs, exc.final[:120])
                return
            except Exception as exc:  # AtTimeout, PortGone: the ladder takes over
                error = f"modem failed while sending: {exc}"[:160]
                job.after_part(PartResult(index, error=error, doubt=bool(written)))
                job.on_done(refs, error)
                raise
            values = signal.fields(signal.first(lines, "+CMGS:"))
            ref = signal.integer(values[0], 0, 255) if values else None
            job.after_part(PartResult(index, ref=ref))
            refs.append(-1 if ref is None else ref)
        log(logger, "info", "modem.sms_sent", parts=len(indices), refs=refs)
        job.on_done(refs, None)

    # --- recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        self._ready = False
        if self._chan is not None:
            # A modem still waiting for an SMS body takes every command as text: ESC.
            self._chan.cancel_prompt()
            self._stop.wait(0.2)
        try:
            self._ping()
            return  # answered again: set up anew
        except AtTimeout:
            pass
        for step, action in (("reset", self._soft_reset), ("power", self._power_cycle)):
            if action():
                log(logger, "info", "modem.recovered", by=step)
                self.resets += 1
                return
        if self._answers():  # never silent while it answers
            log(logger, "info", "modem.recovered", by="answer")
            return
        self._set_state("silent")
        self._health.set("modem_silent", "4G模块无响应（已重启和断电重启）",
                         "the 4G modem does not answer (reset and power cycle tried)",
                         action="check the modem and its power; retried with back-off")
        self._stop.wait(self._backoff())

    def _soft_reset(self) -> bool:
        self._ready_seen.clear()
        self._expect_boot = time.monotonic() + self._config.rdy_timeout_s + _BOOT_DEBOUNCE_S
        log(logger, "warning", "modem.reset", how=self._profile.reset)
        with contextlib.suppress(AtTimeout, AtError):
            self._at(self._profile.reset, min(_PING_TIMEOUT_S, self._config.command_timeout_s))
        return self._await_ready()

    def _power_cycle(self) -> bool:
        if self._power is None:
            return False
        log(logger, "warning", "modem.power_cycle", off_s=self._config.power_off_s)
        self._ready_seen.clear()
        self._expect_boot = time.monotonic() + self._config.power_off_s + \
            self._config.rdy_timeout_s + _BOOT_DEBOUNCE_S
        self._power.on()  # the relay opens the modem's supply
        self._stop.wait(self._config.power_off_s)
        self._power.off()
        return self._await_ready()

    def _await_ready(self) -> bool:
        """Until `rdy_timeout_s`: any vendor's ready notice (RDY, ^SYSSTART, +CPIN: READY,
        ...) or an answer to AT, whichever comes first. A USB modem re-enumerates
        meanwhile, so its port is reopened."""
        start = time.monotonic()
        deadline = start + self._config.rdy_timeout_s
        next_ping = start + min(_READY_PING_AFTER_S, self._config.rdy_timeout_s / 2)
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._ready_seen.wait(0.1):
                return True
            if self._chan is None or not self._chan.alive:
                if self._chan is not None:
                    self._chan.close()
                    self._chan = None
                with contextlib.suppress(PortGone):
                    self._chan = self._channel()
            elif time.monotonic() >= next_ping:
                next_ping = time.monotonic() + _READY_PING_AFTER_S
                try:
                    self._at("AT", 0.5)
                    return True
                except AtError:
                    return True  # it answers, if only to refuse
                except (AtTimeout, PortGone):
                    pass
        return False

    def _answers(self) -> bool:
        try:
            self._ping()
        except (AtTimeout, PortGone):
            return False
        return True


def _replace(report: ModemReport, **changes: Any) -> ModemReport:
    return msgspec.structs.replace(report, **changes)
