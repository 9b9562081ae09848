"""The 4G modem as a part of the station: its state, SMS, and keeping it alive.

All modem I/O runs on one worker thread (`modem`) fed by a bounded queue, so nothing
else ever waits on the modem: `send_sms` queues and returns at once. The worker:

- opens the port (absent → problem `modem_absent`, retried with back-off);
- detects the model (`ATI`, `AT+CGMM`) and adapts: ICCID and serving-cell commands, and
  the EC25's habit of announcing delivery reports as `+CDSI: "SM"` while storing them in
  "SR" (it asks for direct `+CDS`, CNMI ds=1, and reads "SR" when a `+CDSI` comes anyway);
- checks the SIM (not ready → `modem_sim`), sets PDU mode and the URCs it wants;
- polls signal, registration and operator every `modem.poll_s`;
- on `RDY` (the modem reset itself) sets everything up again;
- on a command timeout climbs the recovery ladder: AT ping, `AT+CFUN=1,1` and wait for
  `RDY`, then a power cycle through the relay on `pins.modem_power`; still silent →
  `modem_silent`, and the ladder is tried again with back-off.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from edge.config import ModemSection
from edge.contract.events import ModemReport
from edge.health import Health
from edge.logs import log
from edge.modem import pdu, signal
from edge.modem.at import AtChannel, AtError, AtTimeout, PortGone, Urc

logger = logging.getLogger("edge.modem")

_QUEUE_MAX = 64
_PING_TRIES = 3
_PING_TIMEOUT_S = 2.0
_PARTS_KEPT = 16  # incoming concatenated messages being reassembled
_PARTS_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    iccid_command: str
    cell_command: str | None
    cell_parse: Callable[[str], tuple[float | None, float | None, float | None]] | None
    # +CDSI says "SM" but the report sits in "SR" (EC25 firmware).
    report_store: str | None


PROFILES = {
    "EC25": Profile("EC25", "AT+QCCID", 'AT+QENG="servingcell"', signal.qeng_lte, "SR"),
    "SIM7600": Profile("SIM7600", "AT+CICCID", "AT+CPSI?", signal.cpsi_lte, None),
    "generic": Profile("generic", "AT+CCID", None, None, None),
}


def detect(identity: list[str]) -> Profile:
    """The profile for what `ATI` / `AT+CGMM` said: Quectel EC2x/EG9x, SIMCom SIM7xxx."""
    text = " ".join(identity).upper()
    if re.search(r"\bE[CG]2\d|\bEG9\d|QUECTEL", text):
        return PROFILES["EC25"]
    if re.search(r"SIM7[56]\d\d|SIMCOM", text):
        return PROFILES["SIM7600"]
    return PROFILES["generic"]


@dataclass
class SmsJob:
    """One text to one number. Callbacks run on the modem thread and must be quick."""

    number: str
    text: str
    on_start: Callable[[], None] = lambda: None
    # (message references, error): the references are one per part, in order.
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
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_QUEUE_MAX)
        self._stop = threading.Event()
        self._rdy = threading.Event()
        self._chan: AtChannel | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._report = ModemReport(state="starting")
        self._profile = PROFILES["generic"]
        self._reference = int(time.time()) & 0xFF
        self._assembling: OrderedDict[tuple[str, int], _Assembly] = OrderedDict()
        self._retry_s = 1.0
        self._expect_rdy = False
        self.resets = 0
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
        if urc.line == "RDY":
            self._rdy.set()
        try:
            self._queue.put_nowait(urc)
        except queue.Full:
            log(logger, "warning", "modem.urc_dropped", line=urc.line,
                action="the modem thread is behind; a delivery report may be missing")

    # --- the modem thread ------------------------------------------------------------

    def _run(self) -> None:
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                next_poll = self._step(next_poll)
            except Exception:  # this thread must outlive anything the modem does
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
                action="recovering: AT ping, then AT+CFUN=1,1, then a power cycle")
            try:
                self._recover()
            except PortGone as gone:
                self._gone(gone)
        except PortGone as exc:
            self._gone(exc)
        except AtError as exc:
            # A refused setup step: the modem answers, so try again after a pause.
            log(logger, "warning", "modem.setup_refused", error=str(exc),
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

    def _at(self, command: str, timeout: float | None = None, data: str | None = None
            ) -> list[str]:
        if self._chan is None:
            raise PortGone("modem port not open")
        return self._chan.command(command, timeout or self._config.command_timeout_s, data)

    def _setup(self) -> None:
        self._ping()
        self._at("ATE0")
        self._at("AT+CMEE=1")
        identity = self._at("ATI")
        cgmm: list[str] = []
        with contextlib.suppress(AtError):
            cgmm = self._at("AT+CGMM")
        self._profile = detect(identity + cgmm)
        model = next(iter(cgmm or identity), None)
        try:
            sim = " ".join(self._at("AT+CPIN?"))
        except AtError as exc:
            sim = exc.final
        if "READY" not in sim:
            self._set_state("sim_locked", model=model)
            self._health.set("modem_sim", f"SIM卡不可用：{sim}", f"SIM card not usable: {sim}",
                             action="insert the SIM or remove its PIN lock")
            raise AtError("AT+CPIN?", sim)
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
        iccid = None
        with contextlib.suppress(AtError):
            iccid = signal.iccid(self._at(self._profile.iccid_command))
        self._set_state("ok", model=model or self._profile.name, iccid=iccid)
        self._ready = True
        self._retry_s = 1.0
        self._health.clear("modem_silent")
        log(logger, "info", "modem.ready", model=model, profile=self._profile.name,
            port=self._config.port)

    def _ping(self) -> None:
        for attempt in range(_PING_TRIES):
            try:
                self._at("AT", min(_PING_TIMEOUT_S, self._config.command_timeout_s))
                return
            except AtTimeout:
                if attempt == _PING_TRIES - 1:
                    raise

    def _poll(self) -> None:
        csq = next(iter(self._at("AT+CSQ")), "")
        creg = cereg = cops = None
        with contextlib.suppress(AtError):
            creg = signal.registration(next(iter(self._at("AT+CREG?")), ""), query=True)
        with contextlib.suppress(AtError):
            cereg = signal.registration(next(iter(self._at("AT+CEREG?")), ""), query=True)
        with contextlib.suppress(AtError):
            cops = next(iter(self._at("AT+COPS?")), None)
        rsrp = rsrq = sinr = None
        if self._profile.cell_command and self._profile.cell_parse:
            with contextlib.suppress(AtError):
                for line in self._at(self._profile.cell_command):
                    rsrp, rsrq, sinr = self._profile.cell_parse(line)
                    if rsrp is not None:
                        break
        with self._lock:
            old = self._report
            self._report = ModemReport(
                state="ok", model=old.model, iccid=old.iccid,
                reg=signal.best_registration(creg, cereg), operator=signal.operator(cops or ""),
                tech=signal.access_tech(cops or ""), csq_dbm=signal.csq_dbm(csq),
                rsrp=rsrp, rsrq=rsrq, sinr=sinr)

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

    def _on_urc(self, urc: Urc) -> None:
        line = urc.line
        if line == "RDY" and self._expect_rdy:
            self._expect_rdy = False  # our own reset: the ladder has set it up again
        elif line == "RDY":
            log(logger, "warning", "modem.reset_seen",
                action="the modem restarted by itself; setting it up again")
            self.resets += 1
            self._ready = False
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
            with self._lock:
                self._report = _replace(self._report, reg=reg)

    def _report_pdu(self, pdu_hex: str) -> None:
        try:
            report = pdu.parse_status_report(pdu_hex)
        except pdu.PduError as exc:
            log(logger, "warning", "modem.bad_report", error=str(exc))
            return
        self.on_report(report)

    def _stored_report(self, line: str) -> None:
        values = signal.fields(line)
        if len(values) < 2:
            return
        announced, index = values[0], values[1]
        # The EC25 says "SM" but keeps the report in "SR": read where it really is.
        store = self._profile.report_store or announced
        try:
            self._at(f'AT+CPMS="{store}"')
            lines = self._at(f"AT+CMGR={index}")
            with contextlib.suppress(AtError):
                self._at(f"AT+CMGD={index}")
        except AtError as exc:
            log(logger, "warning", "modem.report_unreadable", store=store, index=index,
                error=str(exc))
            return
        finally:
            with contextlib.suppress(AtError):
                self._at('AT+CPMS="SM","SM","SM"')
        if len(lines) >= 2:
            self._report_pdu(lines[1])

    def _incoming(self, line: str) -> None:
        values = signal.fields(line)
        if len(values) < 2:
            return
        index = values[1]
        try:
            lines = self._at(f"AT+CMGR={index}")
        except AtError as exc:
            log(logger, "warning", "modem.sms_unreadable", index=index, error=str(exc))
            return
        with contextlib.suppress(AtError):
            self._at(f"AT+CMGD={index}")  # a full SIM stops SMS altogether
        if len(lines) < 2:
            return
        try:
            message = pdu.parse_deliver(lines[1])
        except pdu.PduError as exc:
            log(logger, "warning", "modem.sms_malformed", error=str(exc))
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
        del self._assembling[key]
        text = "".join(assembly.parts[i] for i in sorted(assembly.parts))
        return pdu.Incoming(message.sender, text, None)

    def _send(self, job: SmsJob) -> None:
        if not self._ready:
            job.on_done([], "modem not ready")
            return
        self._reference = (self._reference + 1) & 0xFF
        try:
            parts = pdu.encode_submit(job.number, job.text, self._reference)
        except pdu.PduError as exc:
            job.on_done([], str(exc))
            return
        job.on_start()
        refs: list[int] = []
        try:
            for part in parts:
                lines = self._at(f"AT+CMGS={part.length}", self._config.sms_timeout_s,
                                 data=part.hex)
                ref = next((signal.fields(ln) for ln in lines if ln.startswith("+CMGS:")), [])
                refs.append(int(ref[0]) if ref and ref[0].isdigit() else -1)
        except AtError as exc:
            job.on_done(refs, exc.final)
            return
        except (AtTimeout, PortGone) as exc:
            job.on_done(refs, f"modem failed while sending: {exc}")
            raise
        log(logger, "info", "modem.sms_sent", parts=len(parts), refs=refs)
        job.on_done(refs, None)

    # --- recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        self._ready = False
        try:
            self._ping()
            return  # answered again: set up anew
        except AtTimeout:
            pass
        for step, action in (("cfun", self._soft_reset), ("power", self._power_cycle)):
            if action() and self._answers():
                log(logger, "info", "modem.recovered", by=step)
                self.resets += 1
                return
        self._set_state("silent")
        self._health.set("modem_silent", "4G模块无响应（已重启和断电重启）",
                         "the 4G modem does not answer (reset and power cycle tried)",
                         action="check the modem and its power; retried with back-off")
        self._stop.wait(self._backoff())

    def _soft_reset(self) -> bool:
        self._rdy.clear()
        log(logger, "warning", "modem.reset", how="AT+CFUN=1,1")
        with contextlib.suppress(AtTimeout, AtError):
            self._at("AT+CFUN=1,1", min(_PING_TIMEOUT_S, self._config.command_timeout_s))
        return self._await_rdy()

    def _power_cycle(self) -> bool:
        if self._power is None:
            return False
        log(logger, "warning", "modem.power_cycle", off_s=self._config.power_off_s)
        self._rdy.clear()
        self._power.on()  # the relay opens the modem's supply
        self._stop.wait(self._config.power_off_s)
        self._power.off()
        return self._await_rdy()

    def _await_rdy(self) -> bool:
        """Wait for RDY; a USB modem re-enumerates meanwhile, so reopen its port."""
        self._expect_rdy = True
        deadline = time.monotonic() + self._config.rdy_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._rdy.wait(0.2):
                return True
            if self._chan is None or not self._chan.alive:
                if self._chan is not None:
                    self._chan.close()
                    self._chan = None
                with contextlib.suppress(PortGone):
                    self._chan = self._channel()
        return False

    def _answers(self) -> bool:
        try:
            self._ping()
        except (AtTimeout, PortGone):
            return False
        return True


def _replace(report: ModemReport, **changes: Any) -> ModemReport:
    return msgspec.structs.replace(report, **changes)
