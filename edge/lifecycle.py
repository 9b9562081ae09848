"""One life cycle for every part of a station: built, `start()`ed in the order it was
added, `close()`d in the reverse order by unwinding one ExitStack.

A part starts no thread in its constructor, and its `close()` may be called more than
once, and before `start()`. Each part closes within its share of the stop budget, plus
whatever the parts closed before it left unused (so the last, the outbox, gets the rest);
one still busy after that (a hung broker, a silent modem, a slow card) is left behind (its
threads are daemons) and the stop goes on: a stop is bounded whatever hangs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from edge.logs import log

logger = logging.getLogger("edge.station")


class Part(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


P = TypeVar("P", bound=Part)


class Parts:
    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.shares_s = 0.0
        # Seconds each part took to close at the last stop, in the order they closed.
        self.took_s: dict[str, float] = {}
        self._order: list[Part] = []
        self._stack = contextlib.ExitStack()
        self._closing_from = 0.0
        self._allowed_s = 0.0  # the shares of the parts closed so far, this one's too

    def add(self, part: P, share_s: float) -> P:
        """`part` starts after the parts added before it and closes before them, within
        `share_s` seconds of the stop budget (and what those closed before it left)."""
        if self.shares_s + share_s > self.budget_s + 1e-9:
            raise ValueError(f"{type(part).__name__}: the parts' shares exceed the stop "
                             f"budget of {self.budget_s} s")
        self.shares_s += share_s
        self._order.append(part)
        self._stack.callback(self._close_within, part, share_s)
        return part

    def hold(self, close: Callable[[], object]) -> None:
        """A resource with no thread (a lock file, the pin factory): closed in its turn."""
        self._stack.callback(close)

    def start(self) -> None:
        for part in self._order:
            part.start()

    def close(self) -> None:
        self._closing_from, self._allowed_s = time.monotonic(), 0.0
        self._stack.close()

    def _close_within(self, part: Part, share_s: float) -> None:
        name = type(part).__name__

        def close() -> None:
            try:
                part.close()
            except Exception:  # the other parts must still close
                logger.exception("station.close_failed", extra={"fields": {"part": name}})

        started = time.monotonic()
        self._allowed_s += share_s
        closing = threading.Thread(target=close, name=f"close-{name}", daemon=True)
        closing.start()
        closing.join(max(0.0, self._closing_from + self._allowed_s - started))
        self.took_s[name] = round(time.monotonic() - started, 3)
        if closing.is_alive():
            log(logger, "warning", "station.close_slow", part=name, share_s=share_s,
                action="left behind so that the stop stays bounded (its threads end with "
                       "the process); if it is the Outbox, what it had not committed yet "
                       "was never accepted")
