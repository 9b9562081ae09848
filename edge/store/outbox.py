"""The durable outbox: every event is committed to SQLite before anyone is told it exists.

- An event is *accepted* once its transaction commits (WAL, synchronous=FULL); only then
  does `submit()`'s future resolve, so "accepted" survives a power cut. The WAL index is
  in memory (SQLite's unix-excl VFS): no -shm file is written on the SD card.
- One writer thread owns the write connection and commits whatever has queued up in one
  transaction (group commit): a burst costs one fsync per batch, not one per event.
- Sequence numbers are assigned in that transaction; the next one is the highest row's
  plus one, so they survive restarts and have no gaps among accepted events. The
  counter row in `meta` is written only by transactions that delete rows (eviction,
  parking, cleanup), so that a deleted top row's seq is not used again; an isolated
  event writes no page for it.
- Rows drain by priority, then sequence, and are marked delivered only on PUBACK.
- A row the broker keeps refusing (its ACL) is *parked*: moved to the `rejected` table,
  out of the drain and of eviction, kept with the reason; on the next open (a restart,
  after the township fixed its side) parked rows go back to pending.
- Pending rows are bounded by `max_bytes`: past it, the oldest lowest-priority events are
  evicted and logged. Alarms are never evicted.
Delivered rows stay as the local event log, the newest `keep_delivered` of them.

On open the database is checked (`quick_check`). A damaged one is quarantined and every
readable row salvaged into a fresh outbox, alarms first (`edge.store.repair`). Seqs are
reserved in blocks in a mark file beside the database (`edge.store.seqmark`), so no damage
makes a seq repeat: lost events show up at the township as a gap. A data directory that
cannot be written leaves an outbox that refuses every event (the station then sends
alarms from memory) instead of no station at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
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

from edge.clock import now_iso
from edge.contract.events import Event, Priority, encode
from edge.health import Health
from edge.logs import log
from edge.store import private, repair, schema
from edge.store.repair import Damage, Salvage
from edge.store.seqmark import Mark, SeqMark

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
# Delivered rows past `keep_delivered` are deleted after this many marks: the cut-off is
# found by walking the newest delivered rows, so it is walked rarely.
_CLEANUP_EVERY = 5000
# A batch of marks alone may be this many times `batch_max`.
_ACK_BATCH_X = 4
WAL_CHECKPOINT_BYTES = 4 << 20
# A batch of PUBACKs alone waits this long for more, so a drain commits acks in bulk.
_ACK_LINGER_S = 0.05
# Seqs reserved per write of the mark file: one small fsynced write per this many events.
SEQ_BLOCK = 1000
_REPORTS_SHOWN = 5


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
        health: Health | None = None,
        close_s: float = 5.0,
    ) -> None:
        self.path = path
        self._health = health
        self._close_s = close_s
        self._closed = False
        self._max_bytes = max_bytes
        self._keep_delivered = keep_delivered
        self._batch_max = batch_max
        self._on_commit = on_commit
        self._on_evict = on_evict
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._acks_since_cleanup = 0
        self._mark = SeqMark(path.with_suffix(".seq"))
        self._ceiling = 0
        self._sync = ""  # the write connection's PRAGMA synchronous, as last set
        # Found wrong at this open; the reports in quarantine/ outlive a restart.
        self.damage: Damage | None = None
        # Why the data directory cannot be written, if it cannot: every event is refused.
        self.unwritable: str | None = None

        try:
            self._open()
            target = str(path)
        except (OSError, sqlite3.Error) as exc:
            target = self._open_unwritable(exc)
        except BaseException:  # e.g. data from a newer release: let go of the file (unix-excl)
            with contextlib.suppress(AttributeError, sqlite3.Error):
                self._write.close()
            raise
        self._read = self._connect(target)
        self._read_lock = threading.Lock()
        if health is not None:
            self.report(health)
        # Queued events wait for start(): none is accepted before the writer runs.
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)

    def _open(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        _probe_writable(path.parent)
        prior = self._mark.read()
        if prior is None and self._mark.path.exists():
            log(logger, "error", "outbox.seq_mark_unreadable", path=str(self._mark.path),
                action="the seq high-water mark is damaged; seq continues from the database")
        wal_missing = (path.exists() and path.stat().st_size > 0
                       and not Path(f"{path}-wal").exists())
        salvage: Salvage | None = None
        kept: Path | None = None
        kind: str | None = None
        error = ""
        if (problem := repair.check(path)) is not None:
            kind, error = "corrupt", problem
            kept = repair.quarantine(path)
            salvage = repair.salvage(kept, prior.clean_next if prior else None)
        elif prior is not None and prior.clean_next is None and wal_missing:
            kind = "wal_lost"
            error = "outbox.db-wal is missing after an unclean stop: its commits are lost"
        elif prior is not None and _holds_nothing(path):
            kind = "emptied"
            error = ("outbox.db is missing" if not path.exists() else
                     "outbox.db holds no events although this station stored some")
            kept = repair.quarantine(path) if path.exists() else None

        private.create(path)
        self._write = self._connect(str(path))
        self._page_size()
        self._write.execute("PRAGMA journal_mode=WAL")
        # Checkpoint after the same WAL bytes as SQLite's default does with 4 KiB pages
        # (1,000 pages): small pages must not mean four times the checkpoints in a burst.
        page = self._write.execute("PRAGMA page_size").fetchone()[0]
        self._write.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page}")
        self._write.execute("PRAGMA synchronous=FULL")
        self._sync = "FULL"
        self._create_schema()
        if salvage is not None:
            self._restore(salvage.rows)
        self._unpark()
        db_next, self._pending_bytes = self._load_counters()
        self._next_seq = db_next
        if kind is not None:
            self._next_seq = max(db_next, prior.ceiling if prior else 1,
                                 (salvage.meta_next or 1) if salvage else 1)
        elif prior is not None and prior.clean_next is not None and db_next < prior.clean_next:
            kind = "rolled_back"
            error = (f"outbox.db ends before seq {prior.clean_next} although the station "
                     f"stopped cleanly there: an older copy of the file?")
            self._next_seq = prior.clean_next
        with self._write:
            self._write.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (self._next_seq,))
        self._reserve(self._next_seq + SEQ_BLOCK)
        if kind is not None:
            self._record_damage(kind, error, kept, salvage)

    def _page_size(self) -> None:
        """Small pages for a new database; one made with SQLite's default 4 KiB pages is
        rebuilt once (VACUUM under a rollback journal: a crash midway leaves the old
        file). If that fails (no room for the copy), the old page size is kept."""
        conn = self._write
        size = repair.PAGE_SIZE
        if conn.execute("PRAGMA page_size").fetchone()[0] == size:
            return
        conn.execute(f"PRAGMA page_size={size}")
        if not conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            return  # a new database: created with `size` at its first write
        started = time.monotonic()
        try:
            conn.execute("PRAGMA journal_mode=DELETE")  # checkpoints the WAL into the file
            conn.execute("VACUUM")
        except sqlite3.Error as exc:
            log(logger, "warning", "outbox.page_size_kept", error=str(exc),
                action="the outbox keeps its 4 KiB pages (more SD-card writes per event); "
                       "free space on the data partition and restart to shrink them")
            return
        log(logger, "info", "outbox.page_size_changed", page_size=size,
            seconds=round(time.monotonic() - started, 3))

    def _open_unwritable(self, exc: BaseException) -> str:
        """Keep the outbox's interface over an empty in-memory database; every event is
        refused with the reason, so the station pages from memory and says why."""
        self.unwritable = f"{self.path.parent}: {exc}"
        log(logger, "error", "outbox.unwritable", data_dir=str(self.path.parent),
            error=str(exc),
            action="the data directory cannot be written: remount it read-write, fix its "
                   "owner/permissions or free space, or replace the SD card, then restart; "
                   "until then alarms are sent from memory and nothing is kept")
        with contextlib.suppress(Exception):
            self._write.close()
        memory = f"file:outbox-{id(self)}?mode=memory&cache=shared"
        self._write = self._connect(memory)
        self._create_schema()
        self._unpark()
        self._next_seq, self._pending_bytes = 1, 0
        # Events stored before the directory went read-only are still sent (and sent
        # again after a restart: their delivery cannot be recorded; the township
        # de-duplicates by id).
        for mode in ("mode=ro", "immutable=1"):
            stored = f"{self.path.absolute().as_uri()}?{mode}"
            try:
                conn = self._connect(stored)
                try:
                    conn.execute("SELECT seq, id, type, priority, body FROM events "
                                 "WHERE delivered_at IS NULL LIMIT 1").fetchall()
                finally:
                    conn.close()
            except sqlite3.Error:
                continue
            return stored
        return memory

    def _restore(self, rows: list[repair.Row]) -> None:
        """Put salvaged rows into the fresh database: alarms committed first, so they are
        safe even if the rest no longer fits."""
        insert = ("INSERT OR IGNORE INTO events (seq, id, type, priority, body, size, created, "
                  "delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        for group in ([r for r in rows if r.priority == Priority.ALARM],
                      [r for r in rows if r.priority != Priority.ALARM]):
            with self._write:
                self._write.executemany(insert, [
                    (r.seq, r.id, r.type, r.priority, r.body, r.size, r.created,
                     r.delivered_at) for r in group])

    def _record_damage(self, kind: str, error: str, kept: Path | None,
                       salvage: Salvage | None) -> None:
        rows = salvage.rows if salvage else []
        lost = salvage.lost if salvage else None
        folder = self.path.parent / repair.QUARANTINE
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = kept or folder / f"{self.path.stem}-{kind}-{stamp}"
        self.damage = Damage(
            kind=kind,  # type: ignore[arg-type]
            found_at=now_iso(), error=error,
            quarantined=str(kept.relative_to(self.path.parent)) if kept else None,
            salvaged=len(rows), salvaged_alarms=sum(r.priority == Priority.ALARM for r in rows),
            lost=lost, resumed_at=self._next_seq)
        folder.mkdir(mode=0o700, exist_ok=True)
        repair.write_report(base, self.damage)
        log(logger, "error", "outbox.damaged", **msgspec.to_builtins(self.damage),
            report=str(base) + ".json",
            action=_DAMAGE_ACTION)

    def report(self, health: Health) -> None:
        """Put what is wrong with the store on the state topic and in `status`."""
        if self.unwritable:
            health.set("storage_unwritable",
                       f"数据目录无法写入，报警只能从内存发送，不能保存：{self.unwritable}",
                       f"data directory cannot be written; alarms are sent from memory and "
                       f"not kept: {self.unwritable}",
                       action="remount it read-write or replace the SD card, then restart")
        found = repair.reports(self.path.parent)
        if not found:
            return
        last = found[-1]
        lost = "unknown" if last.lost is None else str(last.lost)
        health.set(
            "outbox_corrupt",
            f"本机事件库曾损坏（{len(found)} 次，最近 {last.found_at}：{last.kind}）；"
            f"已隔离保存，恢复 {last.salvaged} 条（报警 {last.salvaged_alarms} 条），"
            f"丢失 {'未知' if last.lost is None else last.lost} 条；"
            f"新事件从序号 {last.resumed_at} 起",
            f"outbox was damaged ({len(found)} time(s), latest {last.found_at}: {last.kind}); "
            f"kept in quarantine, salvaged {last.salvaged} ({last.salvaged_alarms} alarms), "
            f"lost {lost}; new events continue at seq {last.resumed_at}",
            action=_DAMAGE_ACTION,
            # The newest reports only: the state message stays small however many there are.
            detail={"reports": [msgspec.to_builtins(d) for d in found[-_REPORTS_SHOWN:]],
                    "count": len(found)})

    @staticmethod
    def _connect(target: str) -> sqlite3.Connection:
        if not target.startswith("file:"):  # the card's outbox.db: no -shm file
            target = private.sqlite_uri(Path(target))
        conn = sqlite3.connect(target, check_same_thread=False, timeout=10.0, uri=True)
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
        schema.adopt(self._write, "outbox.db")
        # sqlite-utils has no partial indexes: the drain query only ever reads pending rows.
        with self._write:
            self._write.execute("CREATE UNIQUE INDEX IF NOT EXISTS events_id ON events(id)")
            self._write.execute(
                "CREATE INDEX IF NOT EXISTS events_pending ON events(priority, seq) "
                "WHERE delivered_at IS NULL"
            )
            # Kept up by every delivery mark for a cleanup every _CLEANUP_EVERY marks: not worth
            # its page writes (older databases had it).
            self._write.execute("DROP INDEX IF EXISTS events_delivered")

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

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Commit what was queued, write the clean-stop mark and stop, all on the writer
        thread: a slow card holds that thread past `close_s`, never the caller. What was
        queued but not yet committed was never accepted. Safe twice, and before start()."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(self._close_s)
            if self._thread.is_alive():
                log(logger, "warning", "outbox.close_slow", close_s=self._close_s,
                    action="the SD card is slow: events queued are committed as the writer "
                           "gets to them; check or replace the card")
        elif self._thread.ident is None:  # never started: nothing was committed
            self._clean_stop()
            self._write.close()
        if self._read_lock.acquire(timeout=0.2):  # a reader stuck on the card is left
            try:
                self._read.close()
            finally:
                self._read_lock.release()

    def _clean_stop(self) -> None:
        """The exact next seq, so that a database found behind it is a loss."""
        if self.unwritable is not None:
            return
        try:
            self._mark.write(Mark(self._ceiling, clean_next=self._next_seq))
        except OSError as exc:
            log(logger, "warning", "outbox.seq_mark_failed", error=str(exc),
                action="check the SD card; seq stays safe from the last reservation")

    def _reserve(self, ceiling: int) -> None:
        """Durably reserve seqs below `ceiling` before any of them is used."""
        self._mark.write(Mark(ceiling))
        self._ceiling = ceiling

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

    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest undelivered event was accepted (wall clock), or None."""
        with self._read_lock:
            row = self._read.execute(
                "SELECT MIN(created) FROM events WHERE delivered_at IS NULL").fetchone()
        return None if row[0] is None else max(0.0, time.time() - row[0])

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
                    self._clean_stop()
                    return
        finally:
            self._write.close()

    def _gather(self, first: object) -> list[object]:
        """Take what is queued; a batch of acks alone lingers briefly for more, and may
        be larger (a mark is a few bytes and needs no fsync; fewer, larger transactions
        write fewer pages in a drain)."""
        batch = [first]
        acks_only = isinstance(first, _Ack)
        deadline = time.monotonic() + _ACK_LINGER_S
        while len(batch) < self._batch_max * (_ACK_BATCH_X if acks_only else 1):
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
            kept = [s for s in stored if s.seq not in evicted_seqs]
            # The uplink first: the futures' callbacks (log lines, the LED) run on this
            # thread and must not hold a committed alarm back from the township.
            if kept and self._on_commit:
                try:
                    self._on_commit(kept)
                except Exception:
                    logger.exception("outbox.on_commit_failed")
            for a, s in zip(appends, stored, strict=True):
                if s.seq in evicted_seqs:
                    a.future.set_exception(OutboxFull(
                        f"outbox full of higher-priority events; {s.type} {s.id} not kept"))
                else:
                    a.future.set_result(s)
        if not self.unwritable and self._ceiling - self._next_seq < SEQ_BLOCK // 2:
            try:  # after the futures resolved: the next block, before it is needed
                self._reserve(self._next_seq + SEQ_BLOCK)
            except OSError as exc:
                log(logger, "error", "outbox.seq_mark_failed", error=str(exc),
                    action="check free space and the SD card; events are refused until "
                           "seqs can be reserved")
        for b in batch:
            if isinstance(b, _Barrier):
                b.done.set()

    def _transaction(
        self, appends: list[_Append], acks: list[_Ack], parks: list[_Park] | None = None
    ) -> tuple[list[Stored], list[tuple[int, int]]]:
        if self.unwritable and appends:
            raise OutboxError(f"data directory cannot be written ({self.unwritable})")
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
        if seq > self._ceiling and not self.unwritable:  # a burst larger than the reserve
            self._reserve(seq + SEQ_BLOCK)
        # Only accepting events needs the fsync; delivery marks may be lost to a crash.
        self._synchronous("FULL" if rows else "NORMAL")
        with self._write:
            if rows:
                self._write.executemany(
                    "INSERT INTO events (seq, id, type, priority, body, size, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
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
            deleted = bool(parks)
            if pending_bytes > self._max_bytes:
                evicted = self._evict(pending_bytes - self._max_bytes)
                pending_bytes -= sum(size for _, size in evicted)
                deleted = True
            self._acks_since_cleanup += len(acks)
            if self._acks_since_cleanup >= _CLEANUP_EVERY:
                self._acks_since_cleanup = 0
                deleted = True
                self._write.execute(
                    "DELETE FROM events WHERE delivered_at IS NOT NULL AND seq < "
                    "(SELECT seq FROM events WHERE delivered_at IS NOT NULL "
                    "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (max(0, self._keep_delivered - 1),))
            if deleted:
                self._write.execute(
                    "UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
        self._next_seq, self._pending_bytes = seq, pending_bytes
        # Back to FULL now, while nothing waits: the statement costs as much as an insert,
        # and the next event to accept may be an alarm.
        self._synchronous("FULL")
        return stored, evicted

    def _synchronous(self, mode: str) -> None:
        if mode != self._sync:
            self._write.execute(f"PRAGMA synchronous={mode}")
            self._sync = mode

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
        if self._health is not None:
            self._health.set(
                "outbox_evicted",
                f"离线过久，已丢弃 {info.count} 条低优先级事件"
                f"（序号 {info.first_seq}–{info.last_seq}），报警均保留",
                f"offline too long: dropped {info.count} lower-priority events "
                f"(seq {info.first_seq}-{info.last_seq}); all alarms kept")


_DAMAGE_ACTION = ("the outbox was damaged: the damaged file is kept in <data_dir>/quarantine/ "
                  "with a .json report; copy it off the unit for analysis, check or replace "
                  "the SD card, then delete the .json report to clear this problem; new "
                  "events continue after a seq gap")


def _probe_writable(folder: Path) -> None:
    """Raise OSError unless a file can be created in `folder` (a read-only mount, wrong
    owner or full disk shows here, before anything is half-opened)."""
    probe = folder / f".write-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    probe.unlink()


def _holds_nothing(path: Path) -> bool:
    """The database is gone, zeroed, or not the outbox this station opened before (every
    open stores `next_seq` in `meta`)."""
    if not path.exists() or path.stat().st_size == 0:
        return True
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True
    return row is None
