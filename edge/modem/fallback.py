"""SMS fallback: an alarm the broker has not taken within `modem.sms_after_s` while the
uplink is down goes to the duty numbers by SMS.

- Once per alarm per number: each send is a row in `<data_dir>/sms.db` (beside the
  outbox, not inside it), written before the modem is asked, so a restart never sends
  twice. A row left `submitting` by a crash becomes `unknown`, never resent: the alarm
  itself still goes over MQTT.
- Rate-limited in SMS parts (what the operator bills) per rolling hour and day, replies
  included. Alarms over the limit are `held_back`: counted, on the state topic
  (`sms_rate_limited`) and in the health telemetry.
- The alarm event itself is immutable and already durable, so how its SMS went is a
  follow-up event `alarm.sms` (referencing `alarm_id`) on each change: submitted,
  held back, delivered or failed (from the delivery reports). It drains with the other
  events once the link returns.
- An SMS from a duty number saying 状态 / STATUS is answered with the station's status;
  anything else is logged and ignored.

The watcher runs on its own thread (`sms-fallback`), reading the outbox only while the
link is down; the modem's answers come back on the modem thread. Neither touches the
alarm path.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.config import Config
from edge.contract.events import (
    AlarmPanic,
    AlarmSms,
    AlarmSmsPayload,
    Event,
    SmsRecipient,
    decode_event,
    stamp,
)
from edge.health import Health
from edge.link.uplink import Uplink
from edge.logs import log
from edge.modem import pdu
from edge.modem.device import Modem, SmsJob
from edge.store import private
from edge.store.outbox import Outbox

logger = logging.getLogger("edge.modem.fallback")

_POLL_S = 1.0
_SCAN_LIMIT = 200  # pending rows read per look: alarms come first in drain order
_KEEP_S = 90 * 86400  # rows kept as the local record of what went by SMS
_LIMIT_CHECK_S = 60.0  # how often to see whether sms_rate_limited has cleared
_MAX_ATTEMPTS = 3  # a submit the network refused is tried again, this many times in all
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read over the phone
_SOURCES = {"button": ("一键报警按钮", "panic button"),
            "simulator": ("模拟报警", "simulated alarm"),
            "selftest": ("自检报警", "self-test alarm")}


def short_code(alarm_id: str) -> str:
    """Six characters an officer can read out; the `alarm.sms` event carries it too."""
    digest = hashlib.sha256(alarm_id.encode()).digest()
    return "".join(_CODE_ALPHABET[b % len(_CODE_ALPHABET)] for b in digest[:6])


def alarm_text(config: Config, alarm: AlarmPanic) -> str:
    """Chinese first, then English: station, village, alarm type, local time, code."""
    station = config.station
    name = station.name or station.id
    village = station.village or station.township
    when = dt.datetime.fromisoformat(alarm.ts).astimezone(zoneinfo.ZoneInfo(config.audio.timezone))
    kind_zh, kind_en = _SOURCES.get(alarm.payload.source, (alarm.payload.source,) * 2)
    code = short_code(alarm.id)
    return (f"【平安报警】{village} {name}：{kind_zh}，{when:%m月%d日 %H:%M}。代码 {code}。"
            f"网络中断，请尽快处置。\n"
            f"ALARM {name}, {village}: {kind_en}, {when:%Y-%m-%d %H:%M}. Code {code}.")


def normalise(number: str) -> str:
    """Compare numbers by their last 11 digits: +86 13800138000 == 13800138000."""
    return "".join(c for c in number if c.isdigit())[-11:]


def _alarm_wall_s(alarm_id: str) -> float:
    """A UUIDv7 starts with its unix-ms creation time."""
    try:
        return (uuid.UUID(alarm_id).int >> 80) / 1000.0
    except ValueError:
        return time.time()


class SmsLog:
    """What was sent by SMS, in its own SQLite file; any thread."""

    def __init__(self, path: Path) -> None:
        private.create(path)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0,
                                   isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sms (alarm_id TEXT NOT NULL, number TEXT NOT NULL, "
                "code TEXT NOT NULL, status TEXT NOT NULL, parts INTEGER NOT NULL, "
                "attempts INTEGER NOT NULL DEFAULT 0, refs TEXT NOT NULL DEFAULT '[]', "
                "reports TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL, "
                "submitted_at TEXT, reported_at TEXT, error TEXT, "
                "PRIMARY KEY (alarm_id, number))")
            self._db.execute("CREATE TABLE IF NOT EXISTS sent (ts REAL NOT NULL, "
                             "parts INTEGER NOT NULL, kind TEXT NOT NULL)")
            # A crash between "submitting" and the modem's answer: we cannot know.
            self._db.execute("UPDATE sms SET status = 'unknown' WHERE status = 'submitting'")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def handled(self, alarm_ids: list[str]) -> set[str]:
        """Alarms that already have a row for some number."""
        with self._lock:
            return {r[0] for r in self._db.execute(
                f"SELECT DISTINCT alarm_id FROM sms WHERE alarm_id IN "
                f"({','.join('?' * len(alarm_ids))})", alarm_ids)} if alarm_ids else set()

    def row(self, alarm_id: str, number: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute("SELECT * FROM sms WHERE alarm_id = ? AND number = ?",
                                   (alarm_id, number))
            found = cur.fetchone()
            return dict(zip([c[0] for c in cur.description], found, strict=True)) if found else None

    def rows(self, alarm_id: str) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM sms WHERE alarm_id = ? ORDER BY rowid",
                                   (alarm_id,))
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def used(self, window_s: float) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(parts), 0) FROM sent WHERE ts > ?",
                                        (time.time() - window_s,)).fetchone()[0])

    def held_back(self, window_s: float = 86400.0) -> int:
        with self._lock:
            return int(self._db.execute(
                "SELECT COUNT(*) FROM sms WHERE status = 'held_back' AND created > ?",
                (time.time() - window_s,)).fetchone()[0])

    def begin(self, alarm_id: str, number: str, code: str, parts: int, status: str) -> None:
        """Record the decision before acting on it (fsync: a restart must see it)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO sms (alarm_id, number, code, status, parts, attempts, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alarm_id, number) DO UPDATE SET "
                "status = excluded.status, attempts = attempts + 1",
                (alarm_id, number, code, status, parts, 1 if status != "held_back" else 0,
                 time.time()))
            if status != "held_back":
                self._db.execute("INSERT INTO sent (ts, parts, kind) VALUES (?, ?, 'alarm')",
                                 (time.time(), parts))
            self._db.execute("DELETE FROM sent WHERE ts < ?", (time.time() - 2 * 86400,))
            self._db.execute("DELETE FROM sms WHERE created < ?", (time.time() - _KEEP_S,))

    def reply(self, parts: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO sent (ts, parts, kind) VALUES (?, ?, 'reply')",
                             (time.time(), parts))

    def update(self, alarm_id: str, number: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE sms SET {sets} WHERE alarm_id = ? AND number = ?",
                             (*values.values(), alarm_id, number))

    def retryable(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT * FROM sms WHERE status = 'failed' AND refs = '[]' AND attempts < ?",
                (_MAX_ATTEMPTS,))
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def awaiting_report(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM sms WHERE status = 'submitted' "
                                   "ORDER BY created DESC LIMIT ?", (limit,))
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


class SmsFallback:
    def __init__(self, config: Config, outbox: Outbox, uplink: Uplink, health: Health,
                 modem: Modem, submit: Callable[[Event], Any]) -> None:
        self._config = config
        self._outbox = outbox
        self._uplink = uplink
        self._health = health
        self._modem = modem
        self._submit = submit
        self.log = SmsLog(config.data_dir / "sms.db")
        self._deadlines: dict[str, float] = {}  # alarm id → monotonic time it is overdue
        self._done: set[str] = set()
        self._inflight: set[tuple[str, str]] = set()
        self._limited = False
        self._limit_check = 0.0
        held = self.log.held_back()
        if held:  # still within the day after a restart
            self._report_limit(held)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sms-fallback", daemon=True)
        modem.on_report = self._on_report
        modem.on_sms = self._on_sms

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(1.0)
        self.log.close()

    def held_back(self) -> int:
        return self.log.held_back()

    # --- the watcher thread ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._look()
            except Exception:  # a bad row must not end the watcher
                logger.exception("sms.fallback_failed")
                wait = _POLL_S
            self._wake.wait(wait)
            self._wake.clear()

    def _look(self) -> float:
        """Send what is overdue; returns how long to sleep."""
        now = time.monotonic()
        if self._limited and now >= self._limit_check:
            self._limit_check = now + _LIMIT_CHECK_S
            if self.log.held_back() == 0:  # a day without holding any back
                self._limited = False
                self._health.clear("sms_rate_limited")
        if self._uplink.connected or not self._config.modem.duty_numbers:
            self._deadlines.clear()
            return _POLL_S
        alarms = [row for row in self._outbox.pending({}, _SCAN_LIMIT) if row.type == "alarm.panic"]
        ids = [a.id for a in alarms]
        now = time.monotonic()
        after = self._config.modem.sms_after_s
        for alarm_id in ids:
            if alarm_id not in self._deadlines:
                age = max(0.0, time.time() - _alarm_wall_s(alarm_id))
                self._deadlines[alarm_id] = now + after - age
        for gone in set(self._deadlines) - set(ids):
            del self._deadlines[gone]
        self._done &= set(ids)
        self._done |= self.log.handled([i for i in ids if i not in self._done])
        if self._modem.ready:
            self._retry_failed()
        for row in alarms:
            if row.id in self._done or self._deadlines[row.id] > now:
                continue
            if not self._modem.ready:
                break  # the modem problem is on the state topic already
            event = decode_event(row.body)
            if isinstance(event, AlarmPanic):
                self._send_alarm(event)
                self._done.add(row.id)
        pending = [d - now for i, d in self._deadlines.items() if i not in self._done]
        return max(0.01, min([_POLL_S, *pending]))

    def _budget_left(self) -> int:
        modem = self._config.modem
        return min(modem.sms_per_hour - self.log.used(3600),
                   modem.sms_per_day - self.log.used(86400))

    def _send_alarm(self, alarm: AlarmPanic) -> None:
        text = alarm_text(self._config, alarm)
        parts = pdu.part_count(text)
        code = short_code(alarm.id)
        held = 0
        for number in self._config.modem.duty_numbers:
            if self.log.row(alarm.id, number) is not None:
                continue
            if self._budget_left() < parts:
                self.log.begin(alarm.id, number, code, parts, "held_back")
                held += 1
                continue
            self.log.begin(alarm.id, number, code, parts, "submitting")
            self._dispatch(alarm.id, number, text)
        log(logger, "warning", "sms.alarm_fallback", id=alarm.id, code=code, parts=parts,
            numbers=len(self._config.modem.duty_numbers), held_back=held,
            action="the uplink is down: the alarm went to the duty numbers by SMS")
        if held:
            self._report_limit(self.log.held_back())
            self._emit(alarm.id)

    def _report_limit(self, total: int) -> None:
        self._limited = True
        self._health.set("sms_rate_limited", f"短信已达上限，{total} 条报警短信未发出（24小时内）",
                         f"SMS rate limit reached: {total} alarm SMS held back (24 h)",
                         action="check for a stuck panic button; raise modem.sms_per_hour")

    def _dispatch(self, alarm_id: str, number: str, text: str) -> None:
        key = (alarm_id, number)

        def done(refs: list[int], error: str | None) -> None:
            with self._lock:
                self._inflight.discard(key)
            if error is None:
                self.log.update(alarm_id, number, status="submitted", refs=json.dumps(refs),
                                submitted_at=_now(), error=None)
            else:
                self.log.update(alarm_id, number, status="failed", error=error,
                                refs=json.dumps(refs))
                log(logger, "error", "sms.submit_failed", id=alarm_id, error=error,
                    action="the modem refused the SMS; it is tried again up to "
                           f"{_MAX_ATTEMPTS} times")
            self._emit(alarm_id)

        with self._lock:
            self._inflight.add(key)
        if not self._modem.send_sms(SmsJob(number, text, on_done=done)):
            done([], "modem queue full")

    def _retry_failed(self) -> None:
        for row in self.log.retryable():
            key = (row["alarm_id"], row["number"])
            with self._lock:
                if key in self._inflight:
                    continue
            found = self._outbox.lookup(row["alarm_id"])
            if found is None or found[1]:
                continue  # delivered over MQTT meanwhile
            alarm = self._find_alarm(row["alarm_id"])
            if alarm is None or self._budget_left() < row["parts"]:
                continue
            self.log.begin(row["alarm_id"], row["number"], row["code"], row["parts"],
                           "submitting")
            self._dispatch(row["alarm_id"], row["number"], alarm_text(self._config, alarm))

    def _find_alarm(self, alarm_id: str) -> AlarmPanic | None:
        for row in self._outbox.pending({}, _SCAN_LIMIT):
            if row.id == alarm_id:
                event = decode_event(row.body)
                return event if isinstance(event, AlarmPanic) else None
        return None

    def _emit(self, alarm_id: str) -> None:
        rows = self.log.rows(alarm_id)
        if not rows:
            return
        recipients = [SmsRecipient(number=r["number"],
                                   status="queued" if r["status"] == "submitting" else r["status"],
                                   parts=r["parts"], submitted_at=r["submitted_at"],
                                   reported_at=r["reported_at"], error=r["error"]) for r in rows]
        self._submit(AlarmSms(
            station=self._config.station.id, township=self._config.station.township,
            payload=AlarmSmsPayload(alarm_id=alarm_id, code=rows[0]["code"],
                                    recipients=recipients), **stamp()))

    # --- from the modem thread -------------------------------------------------------

    def _on_report(self, report: pdu.StatusReport) -> None:
        for row in self.log.awaiting_report():
            refs = json.loads(row["refs"])
            if report.reference not in refs or normalise(report.number) != normalise(row["number"]):
                continue
            reports = json.loads(row["reports"])
            reports[str(report.reference)] = report.outcome
            outcomes = [reports.get(str(r)) for r in refs]
            status = ("failed" if "failed" in outcomes
                      else "delivered" if all(o == "delivered" for o in outcomes) else "submitted")
            self.log.update(row["alarm_id"], row["number"], reports=json.dumps(reports),
                            status=status, reported_at=_now() if status != "submitted" else None)
            log(logger, "info", "sms.report", id=row["alarm_id"], reference=report.reference,
                outcome=report.outcome, status=status)
            if status != "submitted":
                self._emit(row["alarm_id"])
            return
        log(logger, "info", "sms.report_unmatched", reference=report.reference)

    def _on_sms(self, message: pdu.Incoming) -> None:
        duty = {normalise(n): n for n in self._config.modem.duty_numbers}
        number = duty.get(normalise(message.sender))
        asks = "状态" in message.text or "STATUS" in message.text.upper()
        if number is None or not asks:
            log(logger, "warning", "sms.ignored", sender=message.sender,
                duty_number=number is not None, text=message.text[:40],
                action="only duty numbers asking 状态/STATUS get an answer")
            return
        text = self.status_text()
        parts = pdu.part_count(text)
        if self._budget_left() < parts:
            log(logger, "warning", "sms.reply_held_back", sender=message.sender,
                action="SMS rate limit reached; the status is on the health topic")
            return
        self.log.reply(parts)
        log(logger, "info", "sms.status_request", sender=message.sender)
        self._modem.send_sms(SmsJob(number, text))

    def status_text(self) -> str:
        cfg = self._config
        name = cfg.station.name or cfg.station.id
        up = self._uplink.connected
        pending = self._outbox.pending_count()
        report = self._modem.report()
        dbm = f"{report.csq_dbm}dBm" if report.csq_dbm is not None else "?"
        problems = ",".join(p.code for p in self._health.problems()) or "-"
        now = dt.datetime.now(zoneinfo.ZoneInfo(cfg.audio.timezone))
        return (f"【平安站点状态】{name}：平台连接{'正常' if up else '中断'}，待发事件{pending}条，"
                f"信号{dbm}，问题：{problems if problems != '-' else '无'}。{now:%m-%d %H:%M}\n"
                f"STATUS {name}: link {'up' if up else 'DOWN'}, {pending} pending, "
                f"signal {dbm}, problems: {problems}.")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
