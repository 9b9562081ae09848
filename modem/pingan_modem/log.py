"""Structured log records: the event name as the message, the fields beside it.

Each program formats them its own way (edge/logs.py on a unit, pingan_centre's JSON
formatter at the township); both read `record.fields`."""

from __future__ import annotations

import logging
from typing import Any


def log(logger: logging.Logger, level: str, event: str, **fields: Any) -> None:
    logger.log(logging.getLevelNamesMapping()[level.upper()], event, extra={"fields": fields})
