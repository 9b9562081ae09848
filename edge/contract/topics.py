"""The MQTT topic layout (documented in docs/topics.md).

    pingan/v1/<township>/<station>/events       station → township, QoS 1
    pingan/v1/<township>/<station>/state        station → township, QoS 1, retained, Last Will
    pingan/v1/<township>/<station>/health       station → township, QoS 1, retained
    pingan/v1/<township>/<station>/cmd          township → station, QoS 1
    pingan/v1/<township>/<station>/cmd/result   station → township, QoS 1
    pingan/v1/<township>/all/cmd                township → every station of the township
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "pingan/v1"
ALL = "all"


@dataclass(frozen=True, slots=True)
class Topics:
    township: str
    station: str

    def __post_init__(self) -> None:
        if self.station == ALL:
            raise ValueError(f"station id {ALL!r} is reserved for township-wide commands")

    @property
    def root(self) -> str:
        return f"{PREFIX}/{self.township}/{self.station}"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def cmd(self) -> str:
        return f"{self.root}/cmd"

    @property
    def cmd_result(self) -> str:
        return f"{self.root}/cmd/result"

    @property
    def all_cmd(self) -> str:
        return f"{PREFIX}/{self.township}/{ALL}/cmd"

    def for_type(self, event_type: str) -> str:
        """Command results go to `…/cmd/result`, every other event to `…/events`."""
        return self.cmd_result if event_type == "cmd.result" else self.events


def township_filter(township: str = "+") -> str:
    """What the township centre subscribes to, to see every station."""
    return f"{PREFIX}/{township}/#"
