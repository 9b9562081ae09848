"""Structured logs for the centre: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

logger = logging.getLogger("pingan_centre")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "event": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # The modem protocol shared with the unit (pingan_modem) logs under its own name.
    for each in (logger, logging.getLogger("pingan_modem")):
        each.handlers[:] = [handler]
        each.setLevel(level.upper())
        each.propagate = False


def log(level: str, event: str, **fields: Any) -> None:
    logger.log(getattr(logging, level.upper()), event, extra={"fields": fields})
