"""What a change does outside its transaction: a command to a station, a word to the screens.

`lifecycle`, `store` and `escalation` change alarms; they are handed an `Effects` by
whoever calls them, never look one up. In the served centre that is the runtime
(`runtime.CentreRuntime`): `send` publishes through its ingest's MQTT client and
`changed` wakes the duty screens' event streams. A process with no broker link (`serve
--no-ingest`, a one-off script, a test) hands `UNLINKED`: a command is then recorded as
not sent, visibly, and the screens of any running centre hear of the change from the
database within a second.
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol


class Effects(Protocol):
    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        """Queue a QoS 1 publish; False when no broker link is up."""
        ...

    def changed(self) -> None:
        """An alarm changed and the change is committed: tell the live screens now."""
        ...


class Unlinked:
    """No broker, no screens in this process."""

    def send(self, topic: str, payload: dict[str, Any]) -> bool:
        return False

    def changed(self) -> None:
        pass


UNLINKED: Final = Unlinked()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode()
