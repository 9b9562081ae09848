"""Where every part hands in the events it raises: stamped with the station's identity,
stored by the outbox (the future resolves once the event is durable), the outcome logged
once, here, and a store that refuses events reported on the state topic."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from edge.config import StationSection
from edge.contract.events import Event, stamp
from edge.health import Health
from edge.logs import log
from edge.store.outbox import Outbox, OutboxFull, Stored

logger = logging.getLogger("edge.station")


class Recorder:
    def __init__(self, station: StationSection, outbox: Outbox, health: Health) -> None:
        self._station = station
        self._outbox = outbox
        self._health = health

    def identity(self) -> dict[str, Any]:
        """The fields a new event of this station takes: who raised it, its id and time."""
        return {"station": self._station.id, "township": self._station.township, **stamp()}

    def record(self, event: Event) -> Future[Stored]:
        future = self._outbox.submit(event)
        future.add_done_callback(lambda f: self._stored(event, f))
        return future

    def _stored(self, event: Event, future: Future[Stored]) -> None:
        exc = future.exception()
        if exc is None:
            stored = future.result()
            log(logger, "info", "event.accepted", id=stored.id, seq=stored.seq, type=stored.type)
            self._health.clear("outbox_failed")
            return
        log(logger, "error", "event.refused", id=event.id, error=str(exc),
            action="see outbox.write_failed / outbox.evicted")
        if not isinstance(exc, OutboxFull):
            self._health.set("outbox_failed", f"事件无法保存到本机存储：{exc}",
                             f"events cannot be stored locally: {exc}",
                             action="free disk space or replace the SD card")
