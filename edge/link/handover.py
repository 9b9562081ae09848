"""Who hands outbox rows to paho next: the uplink's pump, or the outbox writer itself.

Rows must reach paho in commit order. The pump sends from the database, past a cursor.
The writer may hand a small commit (a lone alarm) straight to paho after its fsync: no
thread wakes and no query runs on the way. bench/direct_send.py measured that worth about
a third of press -> township at p50 and a quarter at p99 on a loaded 2-core machine
(issue 18), so it stays, but only under these rules:

    BEHIND     rows may wait past the cursor: only the pump sends (it queries first)
    CAUGHT_UP  everything committed has been handed over: the writer may send its commit
    WRITER     the writer is sending; the pump waits for its turn
    PUMP       the pump is sending; the writer leaves its rows to the pump

A commit the writer did not send, a lost link or a failed hand-over puts the machine
BEHIND (after the send in progress, if any). Only the pump, having found the database
drained, brings it back to CAUGHT_UP. Not thread-safe by itself: the uplink calls it
with its own lock held. Tested alone in tests/test_handover.py.
"""

from __future__ import annotations

import enum


class Turn(enum.Enum):
    BEHIND = "behind"
    CAUGHT_UP = "caught_up"
    WRITER = "writer"
    PUMP = "pump"


class Handover:
    def __init__(self) -> None:
        self.turn = Turn.BEHIND
        self._stale = False  # fell behind during the send in progress

    def writer_may_send(self) -> bool:
        """The writer asks to send its commit now; True gives it the turn (end it with
        writer_done). False: the pump sends it, so call fell_behind()."""
        if self.turn is not Turn.CAUGHT_UP:
            return False
        self.turn, self._stale = Turn.WRITER, False
        return True

    def writer_done(self, handed_over: bool) -> None:
        self._end(Turn.WRITER, handed_over)

    def pump_may_send(self) -> bool:
        """The pump asks for the turn: refused only while the writer sends."""
        if self.turn is Turn.WRITER:
            return False
        self.turn, self._stale = Turn.PUMP, False
        return True

    def pump_done(self, drained: bool) -> None:
        """`drained`: the pump handed over all it found, and found less than it asked for."""
        self._end(Turn.PUMP, drained)

    def fell_behind(self) -> None:
        """Rows were committed that nobody has sent, the link dropped, or a send failed."""
        if self.sending:
            self._stale = True
        else:
            self.turn = Turn.BEHIND

    @property
    def sending(self) -> bool:
        return self.turn in (Turn.WRITER, Turn.PUMP)

    def _end(self, sender: Turn, caught_up: bool) -> None:
        if self.turn is not sender:
            raise RuntimeError(f"{sender.value} ended a send it did not have ({self.turn.value})")
        self.turn = Turn.CAUGHT_UP if caught_up and not self._stale else Turn.BEHIND
        self._stale = False
