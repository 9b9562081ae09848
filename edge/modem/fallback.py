"""SMS fallback: an alarm the broker has not taken within `modem.sms_after_s` while the
uplink is down goes to the duty numbers by SMS, at least once, never lost.

- The decision is durable before anything is sent: per alarm and number a message row
  in `<data_dir>/sms.db` (beside the outbox, not inside it) with the exact text and the
  concatenation reference, and one row per part: `queued` → `submitted` (its PDU handed
  to the modem, written just before) → `accepted` (the network's `+CMGS` reference) →
  `delivered` or `failed` (its delivery report).
- A part not known to be accepted is sent again: after a restart (a `submitted` part is
  in doubt: it may have gone), or after a temporary error (`+CMS ERROR: 500`, a hung
  modem), with back-off, per part, for up to 24 h (the validity the SMS asks for). It
  carries the same text, code and concatenation reference, so the phone joins it to
  the parts it has. A part in doubt that is sent again is counted (`resent`): that
  officer may read it twice, and the township hears of it.
- A permanent error (an unassigned or barred number, a refused PDU) ends that number's
  message as `failed`; the other numbers go on.
- Rate-limited in SMS parts (what the operator bills) per rolling hour and day, replies
  included. Alarms over the limit are `held_back`: counted, on the state topic
  (`sms_rate_limited`) and in the health telemetry.
- The alarm event itself is immutable and already durable, so how its SMS went is a
  follow-up event `alarm.sms` (referencing `alarm_id`) on each change: queued,
  submitted, delivered, failed, held back, a part sent again. What was last reported is
  kept on disk, so a change the station could not report before it stopped is
  reported after it starts again. It drains with the other events once the link returns.
- An SMS from a duty number saying 状态 / STATUS is answered with the station's status;
  anything else is logged and ignored.

The watcher runs on its own thread (`sms-fallback`), reading the outbox only while the
link is down; the modem's answers come back on the modem thread. Neither touches the
alarm path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from edge.config import Config
from edge.contract.events import (
    AlarmPanic,
    AlarmSms,
    AlarmSmsPayload,
    Event,
    SmsRecipient,
    SmsStatus,
    decode_event,
    stamp,
)
from edge.health import Health
from edge.link.uplink import Uplink
from edge.logs import log
from edge.modem.device import Modem, PartResult, SmsJob
from edge.store import private, schema
from edge.store.outbox import Outbox
from pingan_modem import pdu
from pingan_modem.rules import normalise as normalise
from pingan_modem.rules import permanent as permanent
from pingan_modem.rules import retry_after as _retry_after
from pingan_modem.rules import short_code as short_code

logger = logging.getLogger("edge.modem.fallback")

_POLL_S = 1.0
_SCAN_LIMIT = 200  # pending rows read per look: alarms come first in drain order
_KEEP_S = 90 * 86400  # rows kept as the local record of what went by SMS
_LIMIT_CHECK_S = 60.0  # how often to see whether sms_rate_limited has cleared
_GIVE_UP_S = 86400.0  # for as long as the SMS would be valid (TP-VP 24 h)
_REPORT_WINDOW_S = 2 * 86400.0  # alarms whose alarm.sms is checked again at a start
_SOURCES = {"button": ("一键报警按钮", "panic button"),
            "simulator": ("模拟报警", "simulated alarm"),
            "selftest": ("自检报警", "self-test alarm")}


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


def _alarm_wall_s(alarm_id: str) -> float:
    """A UUIDv7 starts with its unix-ms creation time."""
    try:
        return (uuid.UUID(alarm_id).int >> 80) / 1000.0
    except ValueError:
        return time.time()


class SmsLog:
    """What is and was sent by SMS, part by part, in its own SQLite file; any thread.

    Every write is committed with a full fsync before it returns: a part marked
    `submitted` is on disk before its PDU reaches the modem. After `close()` writes are
    ignored (the modem thread may still report a part the station gave up waiting for;
    the restart reads the part as it was left)."""

    def __init__(self, path: Path) -> None:
        private.create(path)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0,
                                   isolation_level=None)
        self._lock = threading.Lock()
        self._closed = False
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
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(sms)")}
            # Rows from before per-part state (no text) stay as they were: `unknown` is
            # never resent, as then.
            for name, kind in (("text", "TEXT"), ("ref", "INTEGER")):
                if name not in columns:
                    self._db.execute(f"ALTER TABLE sms ADD COLUMN {name} {kind}")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS sms_part (alarm_id TEXT NOT NULL, "
                "number TEXT NOT NULL, idx INTEGER NOT NULL, state TEXT NOT NULL, ref INTEGER, "
                "attempts INTEGER NOT NULL DEFAULT 0, doubt INTEGER NOT NULL DEFAULT 0, "
                "resent INTEGER NOT NULL DEFAULT 0, error TEXT, accepted_at TEXT, "
                "reported_at TEXT, PRIMARY KEY (alarm_id, number, idx))")
            self._db.execute("CREATE TABLE IF NOT EXISTS sms_reported (alarm_id TEXT PRIMARY "
                             "KEY, summary TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS sent (ts REAL NOT NULL, "
                             "parts INTEGER NOT NULL, kind TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, "
                             "value INTEGER NOT NULL)")
            schema.adopt(self._db, "sms.db")
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                # Stopped or killed while a part was at the modem: it may have gone, or
                # not. It goes again, and counts as possibly twice if it then does.
                self._db.execute("UPDATE sms_part SET state = 'queued', doubt = 1 "
                                 "WHERE state = 'submitted'")
                self._db.execute("UPDATE sms SET status = 'unknown' "
                                 "WHERE status = 'submitting' AND text IS NULL")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Under the lock."""
        if self._closed:
            return []
        cur = self._db.execute(sql, args)
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def handled(self, alarm_ids: list[str]) -> set[str]:
        """Alarms that already have a row for some number."""
        if not alarm_ids:
            return set()
        with self._lock:
            return {r["alarm_id"] for r in self._rows(
                f"SELECT DISTINCT alarm_id FROM sms WHERE alarm_id IN "
                f"({','.join('?' * len(alarm_ids))})", tuple(alarm_ids))}

    def row(self, alarm_id: str, number: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._rows("SELECT * FROM sms WHERE alarm_id = ? AND number = ?",
                               (alarm_id, number))
        return found[0] if found else None

    def rows(self, alarm_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._rows("SELECT * FROM sms WHERE alarm_id = ? ORDER BY rowid",
                              (alarm_id,))

    def parts(self, alarm_id: str, number: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if number is None:
                return self._rows("SELECT * FROM sms_part WHERE alarm_id = ? "
                                  "ORDER BY rowid", (alarm_id,))
            return self._rows("SELECT * FROM sms_part WHERE alarm_id = ? AND number = ? "
                              "ORDER BY idx", (alarm_id, number))

    def used(self, window_s: float) -> int:
        with self._lock:
            if self._closed:
                return 0
            return int(self._db.execute("SELECT COALESCE(SUM(parts), 0) FROM sent WHERE ts > ?",
                                        (time.time() - window_s,)).fetchone()[0])

    def held_back(self, window_s: float = 86400.0) -> int:
        with self._lock:
            if self._closed:
                return 0
            return int(self._db.execute(
                "SELECT COUNT(*) FROM sms WHERE status = 'held_back' AND created > ?",
                (time.time() - window_s,)).fetchone()[0])

    def _next_ref(self) -> int:
        """Under the lock, in a transaction: the next concatenation reference (0-255)."""
        self._db.execute("INSERT INTO counter (name, value) VALUES ('ref', 0) "
                         "ON CONFLICT (name) DO UPDATE SET value = (value + 1) % 256")
        return int(self._db.execute("SELECT value FROM counter WHERE name = 'ref'")
                   .fetchone()[0])

    def create(self, alarm_id: str, code: str, text: str, parts: int,
               plan: list[tuple[str, str]]) -> None:
        """Record the decision before acting on it: per (number, 'queued' | 'held_back')
        a message, and its parts, in one transaction."""
        now = time.time()
        with self._lock:
            if self._closed:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for number, status in plan:
                    cur = self._db.execute(
                        "INSERT INTO sms (alarm_id, number, code, status, parts, created, text, "
                        "ref) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (alarm_id, number, code, status, parts, now, text,
                         self._next_ref() if status == "queued" else None))
                    if cur.rowcount == 0 or status != "queued":
                        continue
                    self._db.executemany(
                        "INSERT INTO sms_part (alarm_id, number, idx, state) "
                        "VALUES (?, ?, ?, 'queued')",
                        [(alarm_id, number, i) for i in range(parts)])
                    self._db.execute("INSERT INTO sent (ts, parts, kind) VALUES (?, ?, 'alarm')",
                                     (now, parts))
                self._db.execute("DELETE FROM sent WHERE ts < ?", (now - 2 * 86400,))
                old = now - _KEEP_S
                self._db.execute("DELETE FROM sms_part WHERE alarm_id IN "
                                 "(SELECT alarm_id FROM sms WHERE created < ?)", (old,))
                self._db.execute("DELETE FROM sms_reported WHERE alarm_id IN "
                                 "(SELECT alarm_id FROM sms WHERE created < ?)", (old,))
                self._db.execute("DELETE FROM sms WHERE created < ?", (old,))

    def reply(self, parts: int) -> int:
        """A status reply of `parts` is going out: counted; its concatenation reference."""
        with self._lock:
            if self._closed:
                return 0
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT INTO sent (ts, parts, kind) VALUES (?, ?, 'reply')",
                                 (time.time(), parts))
                return self._next_ref()

    def active(self) -> list[dict[str, Any]]:
        """Messages with parts still to send, oldest first, with `queued`: the indices."""
        with self._lock:
            messages = self._rows("SELECT alarm_id, number, text, ref, parts, created "
                                  "FROM sms WHERE status = 'queued' AND text IS NOT NULL "
                                  "ORDER BY created, rowid")
            for m in messages:
                m["queued"] = [r["idx"] for r in self._rows(
                    "SELECT idx FROM sms_part WHERE alarm_id = ? AND number = ? "
                    "AND state = 'queued' ORDER BY idx", (m["alarm_id"], m["number"]))]
        return messages

    def submitting(self, alarm_id: str, number: str, index: int) -> None:
        """Part `index` is about to be handed to the modem (durable before it is)."""
        with self._lock:
            if self._closed:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE sms_part SET state = 'submitted' WHERE alarm_id = ? "
                                 "AND number = ? AND idx = ?", (alarm_id, number, index))

    def part_result(self, alarm_id: str, number: str, index: int, ref: int | None,
                    error: str | None, doubt: bool, final: bool) -> dict[str, Any] | None:
        """How part `index` ended at the modem; returns the part as it now is."""
        with self._lock:
            if self._closed:
                return None
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                key = (alarm_id, number, index)
                if error is None:
                    # Accepted. Sent while in doubt: the phone may now have it twice (and
                    # the operator bills it twice).
                    self._db.execute(
                        "INSERT INTO sent (ts, parts, kind) SELECT ?, 1, 'resent' FROM "
                        "sms_part WHERE alarm_id = ? AND number = ? AND idx = ? AND doubt = 1",
                        (time.time(), *key))
                    self._db.execute(
                        "UPDATE sms_part SET state = 'accepted', ref = ?, "
                        "attempts = attempts + 1, resent = resent + doubt, doubt = 0, "
                        "error = NULL, accepted_at = ? WHERE alarm_id = ? AND number = ? "
                        "AND idx = ?", (ref, _now(), *key))
                else:
                    self._db.execute(
                        "UPDATE sms_part SET state = ?, attempts = attempts + 1, "
                        "doubt = MAX(doubt, ?), error = ? WHERE alarm_id = ? AND number = ? "
                        "AND idx = ?", ("failed" if final else "queued", int(doubt), error,
                                        *key))
                self._refresh(alarm_id, number, error)
                found = self._rows("SELECT * FROM sms_part WHERE alarm_id = ? AND number = ? "
                                   "AND idx = ?", key)
        return found[0] if found else None

    def expire(self, alarm_id: str, number: str, error: str) -> None:
        """Give up on what is still queued (the SMS would have expired anyway)."""
        with self._lock:
            if self._closed:
                return
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE sms_part SET state = 'failed', error = ? WHERE "
                                 "alarm_id = ? AND number = ? AND state IN "
                                 "('queued', 'submitted')", (error, alarm_id, number))
                self._refresh(alarm_id, number, error)

    def report(self, reference: int, number: str, outcome: str) -> str | None:
        """A delivery report for message reference `reference` to `number`: the alarm
        whose part it is (the one accepted last with that reference), or None."""
        wanted = normalise(number)
        with self._lock:
            if self._closed:
                return None
            found = [p for p in self._rows(
                "SELECT alarm_id, number, idx FROM sms_part WHERE ref = ? AND state = "
                "'accepted' ORDER BY accepted_at DESC, rowid DESC", (reference,))
                if normalise(p["number"]) == wanted]
            if not found:
                return None
            part = found[0]
            if outcome == "pending":
                return str(part["alarm_id"])
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE sms_part SET state = ?, reported_at = ? WHERE "
                                 "alarm_id = ? AND number = ? AND idx = ?",
                                 (outcome, _now(), part["alarm_id"], part["number"],
                                  part["idx"]))
                self._refresh(part["alarm_id"], part["number"],
                              "delivery report: failed" if outcome == "failed" else None)
        return str(part["alarm_id"])

    def _refresh(self, alarm_id: str, number: str, error: str | None) -> None:
        """Under the lock, in a transaction: the message's status from its parts."""
        states = [r["state"] for r in self._rows(
            "SELECT state FROM sms_part WHERE alarm_id = ? AND number = ?", (alarm_id, number))]
        if not states:
            return
        if "failed" in states:
            status = "failed"
        elif all(s == "delivered" for s in states):
            status = "delivered"
        elif all(s in ("accepted", "delivered") for s in states):
            status = "submitted"
        else:
            status = "queued"
        now = _now()
        self._db.execute(
            "UPDATE sms SET status = ?, "
            "attempts = (SELECT COALESCE(SUM(attempts), 0) FROM sms_part "
            "            WHERE alarm_id = sms.alarm_id AND number = sms.number), "
            "refs = (SELECT json_group_array(COALESCE(ref, -1)) FROM "
            "        (SELECT ref FROM sms_part WHERE alarm_id = sms.alarm_id "
            "         AND number = sms.number ORDER BY idx)), "
            "submitted_at = CASE WHEN ? IN ('submitted', 'delivered') "
            "  THEN COALESCE(submitted_at, ?) ELSE submitted_at END, "
            "reported_at = CASE WHEN ? IN ('delivered', 'failed') "
            "  THEN COALESCE(reported_at, ?) ELSE NULL END, "
            "error = CASE WHEN ? IN ('submitted', 'delivered') THEN NULL "
            "  ELSE COALESCE(?, error) END "
            "WHERE alarm_id = ? AND number = ?",
            (status, status, now, status, now, status, error, alarm_id, number))

    def recipients(self, alarm_id: str) -> list[SmsRecipient]:
        with self._lock:
            messages = self._rows("SELECT * FROM sms WHERE alarm_id = ? ORDER BY rowid",
                                  (alarm_id,))
            parts = self._rows("SELECT number, state, attempts, resent FROM sms_part "
                               "WHERE alarm_id = ?", (alarm_id,))
        out = []
        for m in messages:
            mine = [p for p in parts if p["number"] == m["number"]]
            status = cast(SmsStatus, "queued" if m["status"] == "submitting" else m["status"])
            out.append(SmsRecipient(
                number=m["number"], status=status, parts=m["parts"],
                submitted_at=m["submitted_at"], reported_at=m["reported_at"],
                error=m["error"],
                parts_accepted=sum(p["state"] in ("accepted", "delivered") for p in mine),
                parts_delivered=sum(p["state"] == "delivered" for p in mine),
                attempts=sum(p["attempts"] for p in mine) if mine else m["attempts"],
                resent=sum(p["resent"] for p in mine)))
        return out

    def reported(self, alarm_id: str) -> str | None:
        with self._lock:
            found = self._rows("SELECT summary FROM sms_reported WHERE alarm_id = ?",
                               (alarm_id,))
        return str(found[0]["summary"]) if found else None

    def set_reported(self, alarm_id: str, summary: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._db.execute("INSERT INTO sms_reported (alarm_id, summary) VALUES (?, ?) "
                             "ON CONFLICT (alarm_id) DO UPDATE SET summary = excluded.summary",
                             (alarm_id, summary))

    def recent(self, window_s: float) -> list[str]:
        """Alarms with a message created within `window_s`."""
        with self._lock:
            return [r["alarm_id"] for r in self._rows(
                "SELECT DISTINCT alarm_id FROM sms WHERE created > ?",
                (time.time() - window_s,))]


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
        self._lock = threading.Lock()  # guards the three below
        self._inflight: set[tuple[str, str]] = set()
        self._not_before: dict[tuple[str, str], float] = {}  # back-off, per message
        # Alarms whose alarm.sms may be due; at start, those the station may have left
        # unreported.
        self._dirty: set[str] = set(self.log.recent(_REPORT_WINDOW_S))
        self._limited = False
        self._limit_check = 0.0
        held = self.log.held_back()
        if held:  # still within the day after a restart
            self._report_limit(held)
        self._closed = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sms-fallback", daemon=True)
        modem.on_report = self._on_report
        modem.on_sms = self._on_sms
        modem.on_ready = self._wake.set  # parts waiting for the modem go at once

    def start(self) -> None:
        self._thread.start()

    def halt(self) -> None:
        """Stop the watcher (idempotent); the modem may still report parts (see `close`)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(1.0)

    def close(self) -> None:
        """After the modem is closed: report what changed, close the log. Idempotent."""
        self.halt()
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # best effort: the restart reports it too
            self._report_changes()
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
        """Decide what is overdue, send what is due; returns how long to sleep."""
        now = time.monotonic()
        if self._limited and now >= self._limit_check:
            self._limit_check = now + _LIMIT_CHECK_S
            if self.log.held_back() == 0:  # a day without holding any back
                self._limited = False
                self._health.clear("sms_rate_limited")
        waits = [_POLL_S]
        if self._uplink.connected or not self._config.modem.duty_numbers:
            self._deadlines.clear()
        else:
            waits.extend(self._overdue(now))
        if self._modem.ready:
            waits.extend(self._dispatch(time.monotonic()))
        self._report_changes()
        return max(0.01, min(waits))

    def _overdue(self, now: float) -> list[float]:
        """Record an SMS for each alarm past `sms_after_s`; how long until the next one."""
        alarms = [row for row in self._outbox.pending({}, _SCAN_LIMIT) if row.type == "alarm.panic"]
        ids = [a.id for a in alarms]
        after = self._config.modem.sms_after_s
        for alarm_id in ids:
            if alarm_id not in self._deadlines:
                age = max(0.0, time.time() - _alarm_wall_s(alarm_id))
                self._deadlines[alarm_id] = now + after - age
        for gone in set(self._deadlines) - set(ids):
            del self._deadlines[gone]
        self._done &= set(ids)
        self._done |= self.log.handled([i for i in ids if i not in self._done])
        for row in alarms:
            if row.id in self._done or self._deadlines[row.id] > now:
                continue
            event = decode_event(row.body)
            if isinstance(event, AlarmPanic):
                self._send_alarm(event)
            self._done.add(row.id)
        return [d - now for i, d in self._deadlines.items() if i not in self._done]

    def _budget_left(self) -> int:
        modem = self._config.modem
        return min(modem.sms_per_hour - self.log.used(3600),
                   modem.sms_per_day - self.log.used(86400))

    def _send_alarm(self, alarm: AlarmPanic) -> None:
        text = alarm_text(self._config, alarm)
        parts = pdu.part_count(text)
        code = short_code(alarm.id)
        left = self._budget_left()
        plan = []
        for number in self._config.modem.duty_numbers:
            if left >= parts:
                plan.append((number, "queued"))
                left -= parts
            else:
                plan.append((number, "held_back"))
        self.log.create(alarm.id, code, text, parts, plan)
        held = sum(status == "held_back" for _, status in plan)
        log(logger, "warning", "sms.alarm_fallback", id=alarm.id, code=code, parts=parts,
            numbers=len(plan), held_back=held,
            action="the uplink is down: the alarm goes to the duty numbers by SMS")
        if held:
            self._report_limit(self.log.held_back())
        with self._lock:
            self._dirty.add(alarm.id)

    def _report_limit(self, total: int) -> None:
        self._limited = True
        self._health.set("sms_rate_limited", f"短信已达上限，{total} 条报警短信未发出（24小时内）",
                         f"SMS rate limit reached: {total} alarm SMS held back (24 h)",
                         action="check for a stuck panic button; raise modem.sms_per_hour")

    def _dispatch(self, now: float) -> list[float]:
        """Hand every message with parts due to the modem; how long until the next."""
        waits = []
        for message in self.log.active():
            key = (message["alarm_id"], message["number"])
            with self._lock:
                if key in self._inflight:
                    continue
                not_before = self._not_before.get(key, 0.0)
            if not_before > now:
                waits.append(not_before - now)
                continue
            if time.time() - message["created"] > _GIVE_UP_S:
                self.log.expire(*key, "not sent within 24 h: given up")
                log(logger, "error", "sms.given_up", id=key[0], number=key[1],
                    action="the SMS could not be sent for 24 h; check the modem and the SIM")
                self._mark(key[0])
                continue
            if not message["queued"]:
                continue
            if not self._send(message):
                break  # the modem's queue is full: next look
        return waits

    def _send(self, message: dict[str, Any]) -> bool:
        alarm_id, number = message["alarm_id"], message["number"]
        key = (alarm_id, number)

        def before(index: int) -> None:
            self.log.submitting(alarm_id, number, index)

        def after(result: PartResult) -> None:
            final = result.error is not None and permanent(result.error)
            part = self.log.part_result(alarm_id, number, result.index, result.ref,
                                        result.error, result.doubt, final)
            if result.error is not None:
                attempts = part["attempts"] if part else 1
                if final:
                    log(logger, "error", "sms.failed", id=alarm_id, number=number,
                        part=result.index + 1, error=result.error,
                        action="the network refused this number for good; the other "
                               "numbers go on; check modem.duty_numbers")
                else:
                    delay = _retry_after(attempts)
                    with self._lock:
                        self._not_before[key] = time.monotonic() + delay
                    log(logger, "warning", "sms.retry", id=alarm_id, number=number,
                        part=result.index + 1, error=result.error, attempts=attempts,
                        retry_in_s=delay, action="a temporary failure: tried again")
            elif part and part["resent"]:
                log(logger, "warning", "sms.resent", id=alarm_id, number=number,
                    part=result.index + 1, action="sent again after the station lost track "
                    "of it: the officer may read this part twice")
            self._mark(alarm_id)

        def done(_refs: list[int], error: str | None) -> None:
            with self._lock:
                self._inflight.discard(key)
                if error == "modem not ready":
                    self._not_before[key] = time.monotonic() + _POLL_S
            self._wake.set()

        with self._lock:
            self._inflight.add(key)
        job = SmsJob(number, message["text"], reference=message["ref"],
                     parts=message["queued"], before_part=before, after_part=after,
                     on_done=done)
        if self._modem.send_sms(job):
            return True
        with self._lock:
            self._inflight.discard(key)
        return False

    def _mark(self, alarm_id: str) -> None:
        with self._lock:
            self._dirty.add(alarm_id)
        self._wake.set()

    def _report_changes(self) -> None:
        """An `alarm.sms` for each alarm whose recipients changed since last reported."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for alarm_id in sorted(dirty):
            recipients = self.log.recipients(alarm_id)
            if not recipients:
                continue
            summary = json.dumps([(r.number, r.status, r.resent, r.error) for r in recipients],
                                 ensure_ascii=False)
            if summary == self.log.reported(alarm_id):
                continue
            self._submit(AlarmSms(
                station=self._config.station.id, township=self._config.station.township,
                payload=AlarmSmsPayload(alarm_id=alarm_id, code=self.log.rows(alarm_id)[0]["code"],
                                        recipients=recipients), **stamp()))
            self.log.set_reported(alarm_id, summary)

    # --- from the modem thread -------------------------------------------------------

    def _on_report(self, report: pdu.StatusReport) -> None:
        alarm_id = self.log.report(report.reference, report.number, report.outcome)
        if alarm_id is None:
            log(logger, "info", "sms.report_unmatched", reference=report.reference)
            return
        log(logger, "info", "sms.report", id=alarm_id, reference=report.reference,
            outcome=report.outcome)
        if report.outcome != "pending":
            self._mark(alarm_id)

    def _on_sms(self, message: pdu.Incoming) -> None:
        duty = {normalise(n): n for n in self._config.modem.duty_numbers}
        number = duty.get(normalise(message.sender))
        asks = "状态" in message.text or "STATUS" in message.text.upper()
        if number is None or not asks:
            log(logger, "warning", "sms.ignored", sender=message.sender[:24],
                duty_number=number is not None, text=message.text[:40],
                action="only duty numbers asking 状态/STATUS get an answer")
            return
        text = self.status_text()
        parts = pdu.part_count(text)
        if self._budget_left() < parts:
            log(logger, "warning", "sms.reply_held_back", sender=message.sender,
                action="SMS rate limit reached; the status is on the health topic")
            return
        reference = self.log.reply(parts)
        log(logger, "info", "sms.status_request", sender=message.sender)
        self._modem.send_sms(SmsJob(number, text, reference=reference))

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
