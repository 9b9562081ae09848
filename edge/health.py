"""What is wrong right now, for the retained state topic and the self-test.

Parts report problems by a stable code and clear them when they recover; the uplink
republishes the state whenever the set changes. The loudspeaker's stored schedules go
out on the same state (so the township sees drift), and republish it when they change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edge.clock import now_iso
from edge.contract.events import Problem, ScheduleDigest, text
from edge.logs import log

logger = logging.getLogger("edge.health")


class Health:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[str, Problem] = {}
        self._listeners: list[Callable[[], None]] = []
        self._counts: dict[str, int] = {}
        self._schedules: list[ScheduleDigest] | None = None

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def set(self, code: str, zh: str, en: str, action: str = "",
            detail: dict[str, Any] | None = None) -> None:
        with self._lock:
            old = self._problems.get(code)
            if old and old.message.en == en:
                return
            self._problems[code] = Problem(code=code, message=text(zh, en),
                                           since=old.since if old else now_iso(),
                                           detail=detail or {})
        log(logger, "warning", "health.problem", code=code, message=en, action=action)
        self._notify()

    def clear(self, code: str) -> None:
        with self._lock:
            if self._problems.pop(code, None) is None:
                return
        log(logger, "info", "health.recovered", code=code)
        self._notify()

    def problems(self) -> list[Problem]:
        with self._lock:
            return list(self._problems.values())

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def count(self, name: str, n: int = 1) -> None:
        """Count something worth watching that is not a problem (e.g. motion without a
        person); the totals go out with the next periodic state."""
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def set_schedules(self, schedules: list[ScheduleDigest]) -> None:
        """The loudspeaker's stored schedules, as the state reports them."""
        with self._lock:
            if schedules == self._schedules:
                return
            self._schedules = list(schedules)
        self._notify()

    def schedules(self) -> list[ScheduleDigest] | None:
        with self._lock:
            return None if self._schedules is None else list(self._schedules)
