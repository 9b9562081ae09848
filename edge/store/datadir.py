"""One station per data directory: `station.lock`, held (flock) for the station's life."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TextIO

from edge.config import ConfigError
from edge.logs import log

logger = logging.getLogger("edge.station")


class AlreadyRunning(ConfigError):
    """Another pingan-edge holds this data directory: a restart cannot fix that."""


def hold_data_dir(data_dir: Path) -> TextIO | None:
    """Hold `station.lock` for life. A directory that cannot be written gives no lock and
    no refusal: the outbox reports it and the station pages from memory."""
    path = data_dir / "station.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                              "a")  # held for life
    except OSError as exc:
        try:  # a read-only directory: an existing lock file still excludes a second station
            lock_file = open(path)  # noqa: SIM115
        except OSError:
            log(logger, "error", "station.lock_unavailable", data_dir=str(data_dir),
                error=str(exc), action="the data directory cannot be written; see the "
                "storage_unwritable problem")
            return None
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        lock_file.close()
        raise AlreadyRunning(
            f"another pingan-edge already runs with data directory {data_dir}") from exc
    return lock_file
