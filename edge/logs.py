"""Structured logs: one JSON object per line on stderr (journald keeps them).

Call `log(logger, "info", "uplink.connected", host=..., action="...")`: the event name
is stable for grep and alerting; `action` tells a technician what to do next.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # paho and gpiozero are chatty at debug; their warnings still come through.
    logging.getLogger("paho").setLevel(logging.WARNING)


def log(logger: logging.Logger, level: str, event: str, **fields: Any) -> None:
    logger.log(logging.getLevelNamesMapping()[level.upper()], event, extra={"fields": fields})
