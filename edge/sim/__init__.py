"""The simulator's plumbing: a private broker and buttons pressed from software.

Nothing on the unit's own paths imports this package; the station reaches it only
through the config seams that select it (`broker.local_fallback`, `pins.factory = "mock"`).
"""

from __future__ import annotations

import contextlib
import logging

import msgspec

from edge.config import Config
from edge.logs import log
from edge.sim.localbroker import Mosquitto, reachable

logger = logging.getLogger("edge.station")


def fallback_broker(config: Config, parts: contextlib.ExitStack
                    ) -> tuple[Mosquitto | None, Config]:
    """If the configured broker cannot be reached, start a private mosquitto on loopback
    (stopped by `parts`) and point the config at it."""
    broker = config.broker
    if reachable(broker.host, broker.port):
        return None, config
    local = Mosquitto(config.data_dir / "broker").start()
    parts.callback(local.stop)
    log(logger, "warning", "station.local_broker", port=local.port,
        unreachable=f"{broker.host}:{broker.port}",
        action="simulation only: started a private mosquitto on loopback")
    broker = msgspec.structs.replace(broker, host="127.0.0.1", port=local.port)
    return local, msgspec.structs.replace(config, broker=broker)
