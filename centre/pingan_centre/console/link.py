"""The seam between the console and the broker for what the township sends.

The process that runs ingest registers its MQTT client here; the web views send commands
through it. A web process without ingest records the command as not sent, visibly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Publisher = Callable[[str, bytes], bool]
_publisher: Publisher | None = None


def register(publisher: Publisher | None) -> None:
    global _publisher
    _publisher = publisher


def send(topic: str, payload: dict[str, Any]) -> bool:
    """Queue a QoS 1 publish; False when no broker link is up in this process."""
    if _publisher is None:
        return False
    return _publisher(topic, json.dumps(payload, ensure_ascii=False).encode())
