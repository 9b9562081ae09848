"""The direct-send turn rules alone (edge/link/handover.py): explicit transitions, then a model
of the outbox, the pump and the writer interleaved at random, checking that rows reach
paho in commit order, none skipped, and the writer never sends with rows left behind."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge.link.handover import Handover, Turn


def test_a_new_uplink_is_behind_until_the_pump_drains():
    h = Handover()
    assert not h.writer_may_send()
    assert h.pump_may_send() and h.turn is Turn.PUMP
    h.pump_done(drained=True)
    assert h.turn is Turn.CAUGHT_UP
    assert h.writer_may_send() and h.turn is Turn.WRITER
    assert not h.pump_may_send(), "the pump waits while the writer sends"
    h.writer_done(handed_over=True)
    assert h.turn is Turn.CAUGHT_UP


def test_a_commit_during_the_pumps_send_keeps_the_writer_out():
    h = Handover()
    h.pump_may_send()
    h.fell_behind()  # a commit the writer could not send, while the pump queried
    h.pump_done(drained=True)
    assert h.turn is Turn.BEHIND and not h.writer_may_send()


def test_a_failed_or_undrained_send_leaves_the_rows_to_the_pump():
    h = Handover()
    h.pump_may_send()
    h.pump_done(drained=False)
    assert h.turn is Turn.BEHIND
    h.pump_may_send()
    h.pump_done(drained=True)
    h.writer_may_send()
    h.writer_done(handed_over=False)
    assert h.turn is Turn.BEHIND


def test_a_lost_link_during_the_writers_send_ends_behind():
    h = Handover()
    h.pump_may_send()
    h.pump_done(True)
    h.writer_may_send()
    h.fell_behind()
    h.writer_done(True)
    assert h.turn is Turn.BEHIND


def test_ending_a_send_one_does_not_have_is_a_bug_said_at_once():
    h = Handover()
    with pytest.raises(RuntimeError, match="writer ended a send it did not have"):
        h.writer_done(True)


class Uplink(RuleBasedStateMachine):
    """The outbox (committed seqs), the pump's cursor and paged query, the writer's
    direct send, and what reached paho, stepped in any interleaving."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Handover()
        self.committed: list[int] = []
        self.cursor = 0
        self.sent: list[int] = []
        self.page: list[int] | None = None  # what the pump's query found, not yet sent
        self.asked = 0
        self.writer_rows: list[int] | None = None

    def _hand_over(self, rows: list[int]) -> None:
        for seq in rows:
            if seq > self.cursor:  # what the pump already sent is not sent again
                self.sent.append(seq)
                self.cursor = seq

    @rule(n=st.integers(1, 4))
    @precondition(lambda self: self.writer_rows is None)
    def commit(self, n: int) -> None:
        """The writer commits `n` rows and tries to send them itself."""
        first = (self.committed[-1] if self.committed else 0) + 1
        rows = list(range(first, first + n))
        self.committed += rows
        if self.h.writer_may_send():
            self.writer_rows = rows
        else:
            self.h.fell_behind()

    @rule(ok=st.booleans())
    @precondition(lambda self: self.writer_rows is not None)
    def writer_finishes(self, ok: bool) -> None:
        assert self.writer_rows is not None
        if ok:
            self._hand_over(self.writer_rows)
        self.writer_rows = None
        self.h.writer_done(ok)
        if not ok:
            self.h.fell_behind()  # notify() wakes the pump for the rows

    @rule(room=st.integers(1, 5))
    @precondition(lambda self: self.page is None)
    def pump_queries(self, room: int) -> None:
        if self.h.pump_may_send():
            self.page = [s for s in self.committed if s > self.cursor][:room]
            self.asked = room

    @rule(ok=st.booleans())
    @precondition(lambda self: self.page is not None)
    def pump_finishes(self, ok: bool) -> None:
        assert self.page is not None
        if ok:
            self._hand_over(self.page)
        self.h.pump_done(ok and len(self.page) < self.asked)
        self.page = None

    @rule()
    def link_lost(self) -> None:
        self.h.fell_behind()

    @invariant()
    def in_commit_order_with_nothing_skipped(self) -> None:
        assert self.sent == list(range(1, len(self.sent) + 1))

    @invariant()
    def caught_up_means_nothing_waits(self) -> None:
        if self.h.turn is Turn.CAUGHT_UP:
            assert self.cursor == (self.committed[-1] if self.committed else 0)

    @invariant()
    def one_sender_at_a_time(self) -> None:
        assert not (self.page is not None and self.writer_rows is not None)

    def teardown(self) -> None:
        # Whatever happened, the pump alone delivers the rest.
        if self.writer_rows is not None:
            self.writer_finishes(True)
        if self.page is not None:
            self.pump_finishes(True)
        for _ in range(len(self.committed) + 1):
            self.pump_queries(5)
            self.pump_finishes(True)
        assert self.sent == self.committed


TestUplinkModel = Uplink.TestCase
TestUplinkModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
