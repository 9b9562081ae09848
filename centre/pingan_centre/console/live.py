"""What changed, for the duty screen's server-sent events.

Every alarm change writes a Transition row, so the largest Transition id is a version
every centre process can see, and the rows after a version name the alarms that changed.
One thread per process (`Changes`) reads them: at once when this process committed a
change (`notify()`), else once a second (another centre process shares the database).
It hands each change (version, alarm ids) to every open event stream's `Inbox`, which
holds at most `cap` of them: a stream that falls that far behind (a slow client) is told
to resync, one full snapshot, instead of piling changes up. The stream renders the cards
of the alarms named for its own user and sends them; the browser asks for nothing more.

Station state does not count: a thousand stations' states would redraw every screen many
times a second; the streams send a full snapshot every 30 s, so station health on the
cards follows within that.

PostgreSQL hands out ids before commit, so a long transaction can commit id 10 after
id 11 was read. Ids are therefore re-read for `SETTLE_S` after they were first passed
(and not handed out twice): a late commit still reaches the screens.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

from pingan_centre.console.logs import log

POLL_S = 1.0         # the database is read at least this often (other centre processes)
SETTLE_S = 10.0      # ids this young are read again (a transaction may commit late)
MAX_ROWS = 500       # more new Transition rows than this in one read: everyone resyncs
INBOX_CAP = 64       # changes one stream may have waiting before it is resynced
MAX_STREAMS = 64     # open event streams per process (a township has a few screens)


@dataclass(frozen=True)
class Batch:
    """What a stream has to send: the alarms that changed, or None for everything."""

    version: int
    alarms: frozenset[int] | None


class Busy(Exception):
    """Too many event streams are open."""


class Inbox:
    """One event stream's changes: filled by the Changes thread, drained by the stream's
    coroutine on its event loop. Bounded: past `cap` waiting changes it holds only "resync"."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cap: int = INBOX_CAP) -> None:
        self._loop = loop
        self._cap = cap
        self._lock = threading.Lock()
        self._pending: list[Batch] = []
        self._resync = False
        self._version = 0
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, batch: Batch) -> bool:
        """From any thread; False when the stream's loop is gone (drop the inbox)."""
        with self._lock:
            self._version = max(self._version, batch.version)
            if batch.alarms is None or len(self._pending) >= self._cap:
                self._pending.clear()
                self._resync = True
            elif not self._resync:
                self._pending.append(batch)
        return self._poke()

    def close(self) -> None:
        self.closed = True
        self._poke()

    def _poke(self) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def take(self) -> Batch | None:
        """Everything waiting, merged into one batch; None when nothing is."""
        with self._lock:
            if self._resync:
                batch = Batch(self._version, None)
            elif self._pending:
                alarms = frozenset().union(*(b.alarms or () for b in self._pending))
                batch = Batch(self._version, alarms)
            else:
                return None
            self._pending.clear()
            self._resync = False
            return batch

    async def next(self, timeout: float) -> Batch | None:
        """The next batch, or None after `timeout` seconds (or when closed)."""
        deadline = self._loop.time() + timeout
        while True:
            self._wake.clear()
            batch = self.take()
            remaining = deadline - self._loop.time()
            if batch is not None or self.closed or remaining <= 0:
                return batch
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                return self.take()


class Changes:
    """The process's one reader of Transition: start() reads the version (a database that
    cannot be read fails here, at startup), close() ends the thread and every stream."""

    def __init__(self, poll_s: float = POLL_S, max_streams: int = MAX_STREAMS) -> None:
        self.poll_s = poll_s
        self.max_streams = max_streams
        self.version = 0
        self._inboxes: set[Inbox] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._draining = False
        self._thread: threading.Thread | None = None
        self._floor = 0
        self._recent: set[int] = set()
        self._marks: deque[tuple[float, int]] = deque()

    def start(self) -> Changes:
        self._thread = threading.Thread(target=self._run, name="centre-changes", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            self.close()
            raise RuntimeError("could not read the alarm version within 60 s")
        if self._error is not None:
            self.close()
            raise RuntimeError(f"cannot read the database: {self._error}") from self._error
        return self

    def close(self) -> None:
        """Idempotent; bounded (the thread is between two reads within a poll)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
            if self._thread.is_alive():
                log("warning", "changes.close_timeout", action="a database read hangs")
        self.end_streams()

    def end_streams(self) -> None:
        """Close every inbox (their streams end) and every one opened from now on."""
        with self._lock:
            self._draining = True
            inboxes, self._inboxes = self._inboxes, set()
        for inbox in inboxes:
            inbox.close()

    def notify(self) -> None:
        """This process committed an alarm change: read it now."""
        self._wake.set()

    def subscribe(self, loop: asyncio.AbstractEventLoop) -> Inbox:
        inbox = Inbox(loop)
        with self._lock:
            if self._stop.is_set() or self._draining:
                inbox.closed = True
            elif len(self._inboxes) >= self.max_streams:
                raise Busy(f"{self.max_streams} live screens are open already")
            else:
                self._inboxes.add(inbox)
        return inbox

    def unsubscribe(self, inbox: Inbox) -> None:
        with self._lock:
            self._inboxes.discard(inbox)

    @property
    def streams(self) -> int:
        return len(self._inboxes)

    # --- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        from django.db import close_old_connections, connection

        try:
            try:
                self.version = self._floor = _latest()
            except Exception as exc:
                self._error = exc
                return
            finally:
                self._ready.set()
            while not self._stop.is_set():
                woken = self._wake.wait(self.poll_s)
                self._wake.clear()
                if self._stop.is_set():
                    break
                if not woken:
                    # Idle: the connection's age and health are checked here, not on the
                    # way from a commit to the screens (SQLite's would reopen each time).
                    close_old_connections()
                try:
                    self._read()
                except Exception as exc:
                    log("error", "changes.read_failed", error=repr(exc),
                        action="check the database; the changes are read when it answers")
                    close_old_connections()
                    self._stop.wait(1.0)
        finally:
            connection.close()

    def _read(self) -> None:
        from pingan_centre.console.models import Transition

        now = time.monotonic()
        while self._marks and now - self._marks[0][0] >= SETTLE_S:
            self._floor = max(self._floor, self._marks.popleft()[1])
        self._recent = {i for i in self._recent if i > self._floor}
        rows = list(Transition.objects.filter(id__gt=self._floor).order_by("id")
                    .values_list("id", "alarm_id")[:MAX_ROWS + len(self._recent)])
        fresh = [(i, a) for i, a in rows if i not in self._recent]
        if len(rows) >= MAX_ROWS + len(self._recent):
            # Far behind (a burst, or a long pause): nobody gets a list, everybody a snapshot.
            self.version = self._floor = max(self.version, _latest())
            self._recent.clear()
            self._marks.clear()
            self._hand(Batch(self.version, None))
            return
        if not fresh:
            return
        self._recent.update(i for i, _ in fresh)
        self.version = max(self.version, fresh[-1][0])
        self._marks.append((now, self.version))
        self._hand(Batch(self.version, frozenset(a for _, a in fresh)))

    def _hand(self, batch: Batch) -> None:
        with self._lock:
            inboxes = list(self._inboxes)
        gone = [inbox for inbox in inboxes if not inbox.offer(batch)]
        if gone:
            with self._lock:
                self._inboxes.difference_update(gone)


def _latest() -> int:
    from django.db.models import Max

    from pingan_centre.console.models import Transition
    return int(Transition.objects.aggregate(m=Max("id"))["m"] or 0)
