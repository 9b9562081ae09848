"""The `sms` notifier: the escalation ladder texts the officers on duty through a 4G modem
on the centre PC, at least once, within the operator's rate limits.

The modem protocol is the unit's own (pingan_modem: the AT port and its line reader,
PDUs, vendor profiles, the rules both senders share), so a text from the township reads
like one from a station and carries the same six-character code.

- A rung that names `sms` is recorded by the ladder (EscalationFired) before anything is
  sent; this part turns every such record into durable rows, one `SmsMessage` per phone
  on duty at the moment the rung fired (DutyShift, the rota page) and one `SmsPart` per
  part, in one transaction. A record without rows is planned at the next turn, so a
  centre stopped between the rung and the plan still texts after its restart.
- A part is `queued` → `submitted` (written just before its PDU reaches the modem) →
  `accepted` (the network's `+CMGS` reference) → `delivered` / `failed` (its delivery
  report). A part not known to be accepted is sent again with the same text, code and
  concatenation reference: after a restart (a `submitted` part is in doubt: it is sent
  again and counted `resent`), or after a temporary error, with back-off per part, for
  up to `give_up_s`. A permanent error ends that phone's message as failed.
- Rate-limited in parts per rolling hour and day; texts over the limit are `held_back`.
- Each step lands in the alarm's timeline (Transition): `sms_queued`, `sms_sent`,
  `sms_delivered`, `sms_failed`.

One thread (`centre-sms`) owns the modem and the rows; the AT reader thread only queues
what the modem says on its own. The ladder's call returns at once (it wakes the thread).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import close_old_connections, connection, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from pingan_centre.console.config import SmsConfig
from pingan_centre.console.lifecycle import record
from pingan_centre.console.link import Effects
from pingan_centre.console.logs import log
from pingan_centre.console.models import Alarm, DutyShift, EscalationFired, SmsMessage, SmsPart
from pingan_modem import pdu, profiles, rules, signal
from pingan_modem.at import AtChannel, AtError, AtTimeout, PortGone, Urc

NOTIFIER = "sms"
_QUEUE_MAX = 256  # what the modem says on its own, waiting for the thread
_IDLE_S = 1.0  # a look at the rows at least this often
_REOPEN_MAX_S = 60.0
_REPORT_WINDOW = timedelta(days=2)  # a delivery report matches parts accepted within
_STORES = frozenset({"SM", "ME", "MT", "SR", "BM"})


def compose(alarm: Alarm, step: str, waited_s: float) -> str:
    """Chinese first, then English: village, station, how long unacknowledged, code."""
    station = alarm.station
    village = station.village or station.township
    code = rules.short_code(alarm.first_event)
    local = timezone.localtime(alarm.raised_at)
    return (f"【平安报警升级】{village} {station.name}：{local:%m月%d日 %H:%M}的报警"
            f"{round(waited_s)}秒未确认（{step}）。代码 {code}。请立即处置。\n"
            f"ALARM {station.name}, {village}: not acknowledged for {round(waited_s)} s "
            f"({step}). Code {code}.")


def on_duty(at: datetime) -> list[DutyShift]:
    """The shifts covering `at`, one per phone (the earliest-starting shift names it)."""
    seen: set[str] = set()
    out = []
    for shift in DutyShift.objects.filter(starts__lte=at, ends__gt=at).order_by("starts", "id"):
        key = rules.normalise(shift.phone)
        if key not in seen:
            seen.add(key)
            out.append(shift)
    return out


class SmsNotifier:
    """start() / close(); called by the ladder with the rung's message (returns at once)."""

    def __init__(self, cfg: SmsConfig, effects: Effects,
                 clock: Callable[[], datetime] = timezone.now) -> None:
        self.cfg = cfg
        self.effects = effects
        self.clock = clock
        self._urcs: queue.Queue[Urc] = queue.Queue(maxsize=_QUEUE_MAX)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._chan: AtChannel | None = None
        self._ready = False
        self._profile = profiles.PROFILES["generic"]
        self._reopen_s = 1.0
        self._next_open = 0.0
        self._thread = threading.Thread(target=self._run, name="centre-sms", daemon=True)

    def start(self) -> SmsNotifier:
        self._thread.start()
        return self

    def close(self) -> None:
        """Idempotent; a part at the modem ends at once (left `submitted`: in doubt, sent
        again at the next start)."""
        self._stop.set()
        self._wake.set()
        chan = self._chan
        if chan is not None:
            chan.close()
        if self._thread.is_alive():
            self._thread.join(10)
            if self._thread.is_alive():
                log("warning", "sms.close_timeout", action="a database call hangs")

    def __call__(self, message: dict[str, Any]) -> None:
        # The rung is recorded already (EscalationFired names `sms`): planned from there.
        self._wake.set()

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            close_old_connections()
            self._in_doubt()
            while not self._stop.is_set():
                close_old_connections()
                try:
                    self._turn()
                except Exception as exc:  # a bad row or a modem bug must not end the thread
                    log("error", "sms.failed", error=repr(exc)[:300],
                        action="check the database and the modem; tried again in a second")
                    self._stop.wait(_IDLE_S)
                self._wake.wait(self._sleep())
                self._wake.clear()
        finally:
            if self._chan is not None:
                self._chan.close()
            connection.close()

    def _sleep(self) -> float:
        if not self._ready:  # nothing goes before the modem is back: no hurry
            return min(_IDLE_S, max(0.05, self._next_open - time.monotonic()))
        due = (SmsPart.objects.filter(state="queued", message__status="queued",
                                      not_before__isnull=False)
               .order_by("not_before").values_list("not_before", flat=True).first())
        if due is None:
            return _IDLE_S
        return max(0.01, min(_IDLE_S, (due - self.clock()).total_seconds()))

    def _turn(self) -> None:
        self._plan()
        if self._chan is None or not self._chan.alive:
            self._open()
        self._drain_urcs()
        if self._ready:
            self._dispatch()
            self._drain_urcs()
        self._give_up()

    def _in_doubt(self) -> None:
        """Stopped or killed while a part was at the modem: it may have gone, or not. It
        goes again, and counts as possibly twice if it then does."""
        n = SmsPart.objects.filter(state="submitted").update(state="queued", doubt=True)
        if n:
            log("warning", "sms.in_doubt", parts=n,
                action="parts the centre stopped sending are sent again; an officer may "
                       "read one twice (the code shows it is the same alarm)")

    # --- planning: the durable decision ------------------------------------------------

    def _plan(self) -> None:
        since = self.clock() - timedelta(seconds=self.cfg.give_up_s)
        fired = EscalationFired.objects.filter(at__gte=since).order_by("at", "id")
        for rung in fired:
            if NOTIFIER in (rung.notified or []) and not SmsMessage.objects.filter(
                    alarm_id=rung.alarm_id, step=rung.step).exists():
                self._plan_rung(rung)

    def _budget_left(self, now: datetime) -> int:
        def used(window: timedelta) -> int:
            total = (SmsMessage.objects.filter(created__gt=now - window)
                     .exclude(status=SmsMessage.Status.HELD_BACK).aggregate(n=Sum("parts")))
            return int(total["n"] or 0)
        return min(self.cfg.per_hour - used(timedelta(hours=1)),
                   self.cfg.per_day - used(timedelta(days=1)))

    def _plan_rung(self, rung: EscalationFired) -> None:
        now = self.clock()
        with transaction.atomic():
            alarm = (Alarm.objects.select_for_update().select_related("station")
                     .get(pk=rung.alarm_id))
            if SmsMessage.objects.filter(alarm=alarm, step=rung.step).exists():
                return  # another centre process planned it meanwhile
            text = compose(alarm, rung.step, (rung.at - alarm.raised_at).total_seconds())
            code = rules.short_code(alarm.first_event)
            parts = pdu.part_count(text)
            shifts = on_duty(rung.at)
            if not shifts:
                SmsMessage.objects.create(alarm=alarm, step=rung.step, number="-", code=code,
                                          text=text, ref=0, parts=0, created=now,
                                          status=SmsMessage.Status.FAILED,
                                          error="nobody on duty")
                record(alarm, "sms_failed", alarm.state, "system", now,
                       f"{rung.step}: nobody on duty in the rota / 值班表中此时无人值班")
                log("error", "sms.nobody_on_duty", alarm=alarm.pk, step=rung.step,
                    action="fill in the duty rota (值班表) so the ladder can text someone")
            left = self._budget_left(now)
            last = SmsMessage.objects.exclude(number="-").order_by("-id").first()
            ref = 0 if last is None else last.ref
            for shift in shifts:
                who = f"{shift.name} {shift.phone}"
                if left < parts:
                    SmsMessage.objects.create(
                        alarm=alarm, step=rung.step, number=shift.phone, name=shift.name,
                        code=code, text=text, ref=0, parts=parts, created=now,
                        status=SmsMessage.Status.HELD_BACK, error="rate limit")
                    record(alarm, "sms_failed", alarm.state, "system", now,
                           f"{who}: held back, SMS rate limit reached / 短信已达上限")
                    log("error", "sms.held_back", alarm=alarm.pk, number=shift.phone,
                        action="SMS rate limit reached: raise [sms] per_hour / per_day "
                               "or look for a flood of alarms")
                    continue
                left -= parts
                ref = (ref + 1) % 256
                message = SmsMessage.objects.create(
                    alarm=alarm, step=rung.step, number=shift.phone, name=shift.name,
                    code=code, text=text, ref=ref, parts=parts, created=now)
                SmsPart.objects.bulk_create([SmsPart(message=message, idx=i)
                                             for i in range(parts)])
                record(alarm, "sms_queued", alarm.state, "system", now,
                       f"{who}: {parts} part(s), code {code}")
        log("info", "sms.planned", alarm=rung.alarm_id, step=rung.step,
            numbers=[s.phone for s in shifts], code=code)
        self.effects.changed()

    # --- the modem ---------------------------------------------------------------------

    def _open(self) -> None:
        """(Re)open the port and set the modem up, with back-off while it fails."""
        self._ready = False
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        if time.monotonic() < self._next_open:
            return
        try:
            self._chan = AtChannel(self.cfg.port, self._on_urc, baudrate=self.cfg.baudrate)
            self._setup()
        except (PortGone, AtTimeout, AtError) as exc:
            if isinstance(exc, AtTimeout):
                self._soft_reset()
            if self._chan is not None:
                self._chan.close()
                self._chan = None
            self._next_open = time.monotonic() + self._reopen_s
            log("warning", "sms.modem_unavailable", port=self.cfg.port,
                error=signal.printable(str(exc), 200), retry_in_s=self._reopen_s,
                action="check the centre's 4G modem, its SIM and [sms] port; queued texts "
                       "go once it answers")
            self._reopen_s = min(self._reopen_s * 2, _REOPEN_MAX_S)
            return
        self._reopen_s = 1.0
        self._ready = True

    def _at(self, command: str, timeout: float | None = None, data: str | None = None, *,
            expect: str | None = None,
            before_data: Callable[[], None] | None = None) -> list[str]:
        if self._chan is None:
            raise PortGone("modem port not open")
        return self._chan.command(command, timeout or self.cfg.command_timeout_s, data,
                                  expect=expect, before_data=before_data)

    def _setup(self) -> None:
        assert self._chan is not None
        # ESC: a modem left waiting for an SMS body by a centre that died returns to
        # commands; then a quiet moment, so a late answer goes by as unsolicited.
        self._chan.cancel_prompt()
        self._stop.wait(0.2)
        for attempt in range(3):
            try:
                self._at("AT", 2.0)
                break
            except AtError:
                break  # an answer, if only a refusal
            except AtTimeout:
                if attempt == 2:
                    raise
        self._at("ATE0")
        self._at("AT+CMEE=1")
        identity = self._at("ATI")
        cgmm: list[str] = []
        with contextlib.suppress(AtError):
            cgmm = self._at("AT+CGMM")
        self._profile = profiles.detect(identity + cgmm)
        try:
            sim = signal.first(self._at("AT+CPIN?"), "+CPIN:")
        except AtError as exc:
            sim = exc.final
        if "READY" not in sim:
            raise AtError("AT+CPIN?", signal.printable(sim, 40))
        self._at("AT+CMGF=0")  # PDU mode
        self._at('AT+CPMS="SM","SM","SM"')
        self._at("AT+CNMI=2,1,0,1,0")  # delivery reports directly (+CDS)
        model = signal.model(cgmm) or signal.model(identity)
        log("info", "sms.modem_ready", port=self.cfg.port, model=model,
            profile=self._profile.name)

    def _soft_reset(self) -> None:
        """The modem stopped answering: its profile's soft reset (AT+CFUN=1,1, AT^RESET,
        ...), best effort; the port is then reopened and set up again, with back-off,
        and its boot notice or an answer to AT says it is back."""
        if self._chan is None or not self._chan.alive:
            return
        log("warning", "sms.modem_reset", how=self._profile.reset,
            action="the modem does not answer: reset; if it stays silent, check its power")
        with contextlib.suppress(AtTimeout, AtError, PortGone):
            self._chan.cancel_prompt()
            self._at(self._profile.reset, 2.0)

    def _on_urc(self, urc: Urc) -> None:
        """On the AT reader thread: queue and return."""
        try:
            self._urcs.put_nowait(urc)
        except queue.Full:
            log("warning", "sms.urc_dropped", line=signal.printable(urc.line, 80),
                action="the SMS thread is behind; a delivery report may be missing")
        self._wake.set()

    def _drain_urcs(self) -> None:
        while True:
            try:
                urc = self._urcs.get_nowait()
            except queue.Empty:
                return
            line = urc.line
            if line in profiles.BOOT_NOTICES:
                log("warning", "sms.modem_restarted", how=signal.printable(line, 40),
                    action="the modem restarted by itself; setting it up again")
                self._ready = False
                self._next_open = 0.0
                if self._chan is not None:
                    self._chan.close()
                    self._chan = None
            elif line.startswith("+CDS:"):
                self._report_pdu(urc.pdu)
            elif line.startswith("+CDSI:"):
                self._stored_report(line)

    def _stored_report(self, line: str) -> None:
        values = signal.fields(line)
        index = signal.integer(values[1], 0, 65535) if len(values) >= 2 else None
        if index is None or values[0].upper() not in _STORES:
            log("warning", "sms.bad_notice", line=signal.printable(line, 80))
            return
        store = self._profile.report_store or values[0].upper()
        try:
            self._at(f'AT+CPMS="{store}"')
            lines = self._at(f"AT+CMGR={index}")
            with contextlib.suppress(AtError):
                self._at(f"AT+CMGD={index}")
        except (AtError, AtTimeout, PortGone) as exc:
            log("warning", "sms.report_unreadable", store=store, index=index,
                error=signal.printable(str(exc), 200))
            return
        finally:
            with contextlib.suppress(AtError, AtTimeout, PortGone):
                self._at('AT+CPMS="SM","SM","SM"')
        if len(lines) >= 2:
            self._report_pdu(lines[1])

    # --- sending -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        now = self.clock()
        due = (SmsPart.objects.filter(state="queued", message__status="queued")
               .filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
               .select_related("message").order_by("message__created", "message_id", "idx"))
        by_message: dict[int, list[SmsPart]] = {}
        for part in due:
            by_message.setdefault(part.message_id, []).append(part)
        for parts in by_message.values():
            if self._stop.is_set() or not self._ready:
                return
            self._send(parts[0].message, parts)

    def _send(self, message: SmsMessage, parts: list[SmsPart]) -> None:
        try:
            encoded = pdu.encode_submit(message.number, message.text, message.ref)
        except pdu.PduError as exc:
            self._fail(message, f"not sendable: {exc}")
            return
        for part in parts:
            if part.idx >= len(encoded):
                self._fail(message, f"no part {part.idx + 1} of {len(encoded)}")
                return
            if not self._send_part(message, part, encoded[part.idx]):
                return

    def _send_part(self, message: SmsMessage, part: SmsPart, encoded: pdu.Part) -> bool:
        """True when the part was accepted and the next may go."""
        written: list[bool] = []

        def before() -> None:
            # Durable before the PDU reaches the modem: from now on it may be sent.
            SmsPart.objects.filter(pk=part.pk).update(state="submitted",
                                                      attempts=part.attempts + 1)
            written.append(True)

        try:
            lines = self._at(f"AT+CMGS={encoded.length}", self.cfg.sms_timeout_s,
                             data=encoded.hex, before_data=before)
        except AtError as exc:
            return self._refused(message, part, exc.final[:120])
        except (AtTimeout, PortGone) as exc:
            if self._stop.is_set():
                return False  # closing: left `submitted`, in doubt at the next start
            SmsPart.objects.filter(pk=part.pk).update(
                state="queued", doubt=part.doubt or bool(written),
                attempts=part.attempts + 1, error=signal.printable(str(exc), 120),
                not_before=self.clock() + timedelta(seconds=rules.retry_after(
                    part.attempts + 1, self.cfg.retry_max_s)))
            log("warning", "sms.modem_failed", alarm=message.alarm_id, number=message.number,
                part=part.idx + 1, error=signal.printable(str(exc), 200),
                action="the modem is reopened and set up again; the part goes again")
            self._ready = False
            if isinstance(exc, AtTimeout):
                self._soft_reset()
            if self._chan is not None:
                self._chan.close()
                self._chan = None
            return False
        values = signal.fields(signal.first(lines, "+CMGS:"))
        mr = signal.integer(values[0], 0, 255) if values else None
        now = self.clock()
        SmsPart.objects.filter(pk=part.pk).update(
            state="accepted", mr=mr, accepted_at=now, doubt=False, error="",
            resent=part.resent + (1 if part.doubt else 0))
        if part.doubt:
            log("warning", "sms.resent", alarm=message.alarm_id, number=message.number,
                part=part.idx + 1, action="sent again after the centre lost track of it: "
                "the officer may read this part twice (same code)")
        if not SmsPart.objects.filter(message=message).exclude(
                state__in=("accepted", "delivered")).exists():
            note = f"{message.name} {message.number}: accepted by the network"
            twice = SmsPart.objects.filter(message=message, resent__gt=0).count()
            if twice:
                note += (f"; {twice} part(s) sent again after a restart, may arrive twice "
                         f"(same code {message.code}) / 重启后重发{twice}段，可能收到两次")
            self._conclude(message, SmsMessage.Status.SENT, "sms_sent", note)
        return True

    def _refused(self, message: SmsMessage, part: SmsPart, error: str) -> bool:
        attempts = part.attempts + 1
        if rules.permanent(error):
            SmsPart.objects.filter(pk=part.pk).update(state="failed", attempts=attempts,
                                                      error=error)
            self._fail(message, error)
            return False
        delay = rules.retry_after(attempts, self.cfg.retry_max_s)
        SmsPart.objects.filter(pk=part.pk).update(
            state="queued", attempts=attempts, error=error,
            not_before=self.clock() + timedelta(seconds=delay))
        log("warning", "sms.retry", alarm=message.alarm_id, number=message.number,
            part=part.idx + 1, error=error, attempts=attempts, retry_in_s=delay,
            action="a temporary failure: tried again")
        return False

    def _fail(self, message: SmsMessage, error: str) -> None:
        log("error", "sms.failed_number", alarm=message.alarm_id, number=message.number,
            error=error, action="the network refused this number; check the rota's phone")
        self._conclude(message, SmsMessage.Status.FAILED, "sms_failed",
                       f"{message.name} {message.number}: {error}", error=error)

    def _conclude(self, message: SmsMessage, status: str, action: str, note: str,
                  error: str = "") -> None:
        """The message's new status and its line in the timeline, once."""
        now = self.clock()
        with transaction.atomic():
            changed = SmsMessage.objects.filter(pk=message.pk).exclude(status=status).exclude(
                status__in=_FINAL_OVER.get(status, ())).update(status=status, error=error[:200])
            if changed:
                alarm = Alarm.objects.select_for_update().get(pk=message.alarm_id)
                record(alarm, action, alarm.state, "system", now, note[:500])
        if changed:
            message.status = status
            self.effects.changed()

    def _give_up(self) -> None:
        old = self.clock() - timedelta(seconds=self.cfg.give_up_s)
        for message in SmsMessage.objects.filter(status=SmsMessage.Status.QUEUED,
                                                 created__lt=old):
            self._fail(message, f"not sent within {self.cfg.give_up_s:.0f} s: given up")

    # --- delivery reports --------------------------------------------------------------

    def _report_pdu(self, pdu_hex: str) -> None:
        try:
            report = pdu.parse_status_report(pdu_hex)
        except pdu.PduError as exc:
            log("warning", "sms.bad_report", error=signal.printable(str(exc), 200))
            return
        if report.outcome == "pending":
            return
        since = self.clock() - _REPORT_WINDOW
        candidates = (SmsPart.objects.filter(mr=report.reference, accepted_at__gte=since,
                                             state__in=("accepted", "delivered", "failed"))
                      .select_related("message").order_by("-accepted_at", "-id"))
        wanted = rules.normalise(report.number)
        part = next((p for p in candidates if rules.normalise(p.message.number) == wanted),
                    None)
        if part is None:
            log("info", "sms.report_unmatched", reference=report.reference)
            return
        message = part.message
        SmsPart.objects.filter(pk=part.pk).update(state=report.outcome)
        log("info", "sms.report", alarm=message.alarm_id, number=message.number,
            part=part.idx + 1, outcome=report.outcome)
        states = list(SmsPart.objects.filter(message=message).values_list("state", flat=True))
        who = f"{message.name} {message.number}"
        if report.outcome == "failed":
            self._conclude(message, SmsMessage.Status.FAILED, "sms_failed",
                           f"{who}: the network could not deliver part {part.idx + 1}",
                           error=f"report: not delivered (status {report.status})")
        elif all(s == "delivered" for s in states):
            self._conclude(message, SmsMessage.Status.DELIVERED, "sms_delivered",
                           f"{who}: delivered to the phone, code {message.code}")


# A message that is delivered is never marked merely sent again (a late +CMGS answer
# after a report), nor a failed one queued.
_FINAL_OVER: dict[str, tuple[str, ...]] = {
    SmsMessage.Status.SENT: (SmsMessage.Status.DELIVERED, SmsMessage.Status.FAILED),
}
