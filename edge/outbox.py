"""The durable outbox: every event is committed to SQLite before anyone is told it exists.

- An event is *accepted* once its transaction commits (WAL, synchronous=FULL); only then
  does `submit()`'s future resolve, so "accepted" survives a power cut.
- One writer thread owns the write connection and commits whatever has queued up in one
  transaction (group commit): a burst costs one fsync per batch, not one per event.
- Sequence numbers are assigned in that transaction from a counter stored beside the
  rows, so they survive restarts and have no gaps among accepted events.
- Rows drain by priority, then sequence, and are marked delivered only on PUBACK.
- A row the broker keeps refusing (its ACL) is *parked*: moved to the `rejected` table,
  out of the drain and of eviction, kept with the reason; on the next open (a restart,
  after the township fixed its side) parked rows go back to pending.
- Pending rows are bounded by `max_bytes`: past it, the oldest lowest-priority events are
  evicted and logged. Alarms are never evicted.
Delivered rows stay as the local event log, the newest `keep_delivered` of them.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import msgspec
import sqlite_utils

from edge.events import Event, Priority, encode
from edge.logs import log

logger = logging.getLogger("edge.outbox")


class OutboxError(RuntimeError):
    """The outbox could not store an event (disk full, I/O error)."""


class OutboxFull(OutboxError):
    """The outbox is full of more important events; this one was not kept."""


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    id: str
    type: str
    priority: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Eviction:
    count: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass(slots=True)
class _Append:
    event: Event
    future: Future[Stored]


@dataclass(frozen=True, slots=True)
class _Ack:
    seq: int
    size: int


@dataclass(frozen=True, slots=True)
class _Park:
    seq: int
    reason: str


@dataclass(slots=True)
class _Barrier:
    done: threading.Event


_STOP = object()
_CLEANUP_EVERY = 1000
# A batch of PUBACKs alone waits this long for more, so a drain commits acks in bulk.
_ACK_LINGER_S = 0.05


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        keep_delivered: int = 10000,
        batch_max: int = 500,
        on_commit: Callable[[list[Stored]], None] | None = None,
        on_evict: Callable[[Eviction], None] | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_bytes = max_bytes
        self._keep_delivered = keep_delivered
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._on_evict = on_evict
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._acks_since_cleanup = 0

        self._write = self._connect(path)
        self._write.execute("PRAGMA journal_mode=WAL")
        self._write.execute("PRAGMA synchronous=FULL")
        self._create_schema()
        self._unpark()
        self._read = self._connect(path)
        self._read_lock = threading.Lock()
        self._next_seq, self._pending_bytes = self._load_counters()
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10.0)
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _create_schema(self) -> None:
        db = sqlite_utils.Database(self._write)
        db["events"].create(  # type: ignore[union-attr]
            {"seq": int, "id": str, "type": str, "priority": int, "body": bytes,
             "size": int, "created": float, "delivered_at": float},
            pk="seq", not_null={"id", "type", "priority", "body", "size", "created"},
            if_not_exists=True,
        )
        db["meta"].create({"key": str, "value": int}, pk="key", if_not_exists=True)  # type: ignore[union-attr]
        # sqlite-utils has no partial indexes: the drain query only ever reads pending rows.
        with self._write:
            self._write.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events(id)")
            self._write.execute(
                "CREATE INDEX IF NOT EXISTS events_pending ON events(priority, seq) "
                "WHERE delivered_at IS NULL"
            )
            self._write.execute(
                "CREATE INDEX IF NOT EXISTS events_delivered ON events(seq) "
                "WHERE delivered_at IS NOT NULL"
            )

    def _unpark(self) -> None:
        """Parked rows get another chance on each open: a restart is how a technician
        says "the township fixed its ACL, send them again"."""
        db = sqlite_utils.Database(self._write)
        db["rejected"].create(  # type: ignore[union-attr]
            {"seq": int, "id": str, "type": str, "priority": int, "body": bytes,
             "size": int, "created": float, "rejected_at": float, "reason": str},
            pk="seq", if_not_exists=True)
        with self._write:
            moved = self._write.execute(
                "INSERT OR IGNORE INTO events (seq, id, type, priority, body, size, created) "
                "SELECT seq, id, type, priority, body, size, created FROM rejected").rowcount
            self._write.execute("DELETE FROM rejected")
        if moved:
            log(logger, "warning", "outbox.unparked", count=moved,
                action="events the broker refused before are being sent again")

    def _load_counters(self) -> tuple[int, int]:
        row = self._write.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        max_seq = self._write.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        pending = self._write.execute(
            "SELECT COALESCE(SUM(size), 0) FROM events WHERE delivered_at IS NULL"
        ).fetchone()[0]
        return max(row[0] if row else 1, max_seq + 1), int(pending)

    # --- producers -------------------------------------------------------------------

    def submit(self, event: Event) -> Future[Stored]:
        """Queue `event` for the next group commit; the future resolves once it is durable."""
        future: Future[Stored] = Future()
        self._queue.put(_Append(event, future))
        return future

    def append(self, event: Event, timeout: float = 10.0) -> Stored:
        return self.submit(event).result(timeout)

    def mark_delivered(self, seq: int, size: int) -> None:
        """Record a PUBACK for row `seq` of `size` bytes. Batched and committed without
        fsync: losing one to a crash only means the event is sent again (same id)."""
        self._queue.put(_Ack(seq, size))

    def park(self, seq: int, reason: str) -> None:
        """Take a row the broker keeps refusing out of the drain, keeping it and why."""
        self._queue.put(_Park(seq, reason))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been committed."""
        barrier = _Barrier(threading.Event())
        self._queue.put(barrier)
        return barrier.done.wait(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        with self._read_lock:
            self._read.close()

    # --- readers (any thread) --------------------------------------------------------

    def pending(self, after: dict[int, int], limit: int) -> list[Stored]:
        """Up to `limit` undelivered events in drain order, skipping those with
        `seq <= after[priority]` (already handed to the uplink in this process)."""
        out: list[Stored] = []
        with self._read_lock:
            for prio in Priority:
                if len(out) >= limit:
                    break
                rows = self._read.execute(
                    "SELECT seq, id, type, priority, body FROM events "
                    "WHERE delivered_at IS NULL AND priority = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (int(prio), after.get(prio, 0), limit - len(out)),
                ).fetchall()
                out.extend(Stored(*r) for r in rows)
        return out

    def pending_count(self) -> int:
        with self._read_lock:
            return int(self._read.execute(
                "SELECT COUNT(*) FROM events WHERE delivered_at IS NULL").fetchone()[0])

    def parked(self) -> list[tuple[int, str, str]]:
        """(seq, type, reason) of every parked row, oldest first."""
        with self._read_lock:
            return [(int(r[0]), r[1], r[2]) for r in self._read.execute(
                "SELECT seq, type, reason FROM rejected ORDER BY seq").fetchall()]

    def pending_ids(self, event_type: str) -> list[str]:
        with self._read_lock:
            rows = self._read.execute(
                "SELECT id FROM events WHERE delivered_at IS NULL AND type = ? ORDER BY seq",
                (event_type,),
            ).fetchall()
        return [r[0] for r in rows]

    def recent(self, event_type: str, limit: int) -> list[bytes]:
        """The bodies of the newest `limit` stored events of `event_type`, newest first."""
        with self._read_lock:
            rows = self._read.execute(
                "SELECT body FROM events WHERE type = ? ORDER BY seq DESC LIMIT ?",
                (event_type, limit),
            ).fetchall()
        return [bytes(r[0]) for r in rows]

    def lookup(self, event_id: str) -> tuple[str, bool] | None:
        """(type, delivered) of a stored event, or None if unknown."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT type, delivered_at IS NOT NULL FROM events WHERE id = ?", (event_id,)
            ).fetchone()
        return (row[0], bool(row[1])) if row else None

    # --- the writer thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                batch = self._gather(self._queue.get())
                stop = any(item is _STOP for item in batch)
                self._commit(batch)
                if stop:
                    return
        finally:
            self._write.close()

    def _gather(self, first: object) -> list[object]:
        """Take what is queued; a batch of acks alone lingers briefly for more."""
        batch = [first]
        acks_only = isinstance(first, _Ack)
        deadline = time.monotonic() + _ACK_LINGER_S
        while len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if not acks_only or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            acks_only = acks_only and isinstance(item, _Ack)
        return batch

    def _commit(self, batch: list[object]) -> None:
        appends = [b for b in batch if isinstance(b, _Append)]
        acks = [b for b in batch if isinstance(b, _Ack)]
        parks = [b for b in batch if isinstance(b, _Park)]
        stored: list[Stored] = []
        evicted: list[tuple[int, int]] = []
        try:
            stored, evicted = self._transaction(appends, acks, parks)
        except Exception as exc:  # the transaction rolled back; the writer must live on
            error = OutboxError(f"outbox write failed: {exc}")
            log(logger, "error", "outbox.write_failed", error=str(exc), events=len(appends),
                acks=len(acks), path=str(self.path),
                action="check free space and the SD card; events not stored were refused")
            for a in appends:
                a.future.set_exception(error)
        else:
            evicted_seqs = {seq for seq, _ in evicted}
            if evicted:  # before any future resolves: whoever waits sees the report first
                self._report_eviction(evicted)
            for a, s in zip(appends, stored, strict=True):
                if s.seq in evicted_seqs:
                    a.future.set_exception(OutboxFull(
                        f"outbox full of higher-priority events; {s.type} {s.id} not kept"))
                else:
                    a.future.set_result(s)
            kept = [s for s in stored if s.seq not in evicted_seqs]
            if kept and self._on_commit:
                try:
                    self._on_commit(kept)
                except Exception:
                    logger.exception("outbox.on_commit_failed")
        for b in batch:
            if isinstance(b, _Barrier):
                b.done.set()

    def _transaction(
        self, appends: list[_Append], acks: list[_Ack], parks: list[_Park] | None = None
    ) -> tuple[list[Stored], list[tuple[int, int]]]:
        seq = self._next_seq
        pending_bytes = self._pending_bytes
        stored: list[Stored] = []
        rows = []
        now = time.time()
        for a in appends:
            body = encode(msgspec.structs.replace(a.event, seq=seq))
            stored.append(Stored(seq, a.event.id, type(a.event).__struct_config__.tag,  # type: ignore[arg-type]
                                 a.event.priority, body))
            rows.append((seq, a.event.id, stored[-1].type, a.event.priority, body, len(body), now))
            pending_bytes += len(body)
            seq += 1
        evicted: list[tuple[int, int]] = []
        # Only accepting events needs the fsync; delivery marks may be lost to a crash.
        self._write.execute(f"PRAGMA synchronous={'FULL' if rows else 'NORMAL'}")
        with self._write:
            if rows:
                self._write.executemany(
                    "INSERT INTO events (seq, id, type, priority, body, size, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                self._write.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (seq,))
            for ack in acks:
                if self._write.execute(
                        "UPDATE events SET delivered_at = ? WHERE seq = ? AND delivered_at IS NULL",
                        (now, ack.seq)).rowcount:
                    pending_bytes -= ack.size
            for park in parks or ():
                row = self._write.execute(
                    "SELECT size FROM events WHERE seq = ? AND delivered_at IS NULL",
                    (park.seq,)).fetchone()
                if row is None:
                    continue  # delivered meanwhile, or evicted
                self._write.execute(
                    "INSERT OR REPLACE INTO rejected SELECT seq, id, type, priority, body, "
                    "size, created, ?, ? FROM events WHERE seq = ?", (now, park.reason, park.seq))
                self._write.execute("DELETE FROM events WHERE seq = ?", (park.seq,))
                pending_bytes -= row[0]
            if pending_bytes > self._max_bytes:
                evicted = self._evict(pending_bytes - self._max_bytes)
                pending_bytes -= sum(size for _, size in evicted)
            self._acks_since_cleanup += len(acks)
            if self._acks_since_cleanup >= _CLEANUP_EVERY:
                self._acks_since_cleanup = 0
                self._write.execute(
                    "DELETE FROM events WHERE delivered_at IS NOT NULL AND seq < "
                    "(SELECT seq FROM events WHERE delivered_at IS NOT NULL "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (max(0, self._keep_delivered - 1),))
        self._next_seq, self._pending_bytes = seq, pending_bytes
        return stored, evicted

    def _evict(self, excess: int) -> list[tuple[int, int]]:
        """Delete the oldest lowest-priority pending rows until `excess` bytes are freed."""
        victims: list[tuple[int, int]] = []
        freed = 0
        cursor = self._write.execute(
            "SELECT seq, size FROM events WHERE delivered_at IS NULL AND priority > ? "
            "ORDER BY priority DESC, seq ASC", (int(Priority.ALARM),))
        for seq, size in cursor:
            if freed >= excess:
                break
            victims.append((seq, size))
            freed += size
        cursor.close()
        self._write.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s, _ in victims])
        if freed < excess:
            log(logger, "error", "outbox.full_of_alarms", over_bytes=excess - freed,
                action="alarms are kept beyond outbox.max_bytes; restore the uplink")
        return victims

    def _report_eviction(self, evicted: Iterable[tuple[int, int]]) -> None:
        seqs = [s for s, _ in evicted]
        info = Eviction(len(seqs), sum(size for _, size in evicted), min(seqs), max(seqs))
        log(logger, "warning", "outbox.evicted", count=info.count, bytes=info.bytes,
            first_seq=info.first_seq, last_seq=info.last_seq, max_bytes=self._max_bytes,
            action="uplink down too long: lower-priority events dropped, alarms kept; "
                   "restore the link or raise outbox.max_bytes")
        if self._on_evict:
            self._on_evict(info)
