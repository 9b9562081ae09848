"""The MQTT topic layout, defined once: `TABLE` (documented in docs/topics.md).

    pingan/v1/<township>/<station>/events       station → township, QoS 1
    pingan/v1/<township>/<station>/state        station → township, QoS 1, retained, Last Will
    pingan/v1/<township>/<station>/health       station → township, QoS 1, retained
    pingan/v1/<township>/<station>/cmd          township → station, QoS 1
    pingan/v1/<township>/<station>/cmd/result   station → township, QoS 1
    pingan/v1/<township>/all/cmd                township → every station of the township
    pingan/v1/<township>/<station>/voice        township → station, QoS 0: live speech
    pingan/v1/<township>/all/voice             township → every station, QoS 0: live speech

Everything that names a topic is made from `TABLE` or checked against it by a test
(tests/test_contract.py): the unit's `Topics`; through docs/schema/topics.json (written
with the schemas, shipped in the console's package) the centre's subscriptions and
routing, the broker ACL and the county bridge (`pingan_centre.topics`); the table in
docs/topics.md (`python -m edge.contract.topics` prints it).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "pingan/v1"
ALL = "all"


class Party(StrEnum):
    """Who speaks MQTT: a village unit, the township centre's services (console, ingest),
    and the county broker (through the township broker's bridge)."""

    STATION = "station"
    CENTRE = "centre"
    COUNTY = "county"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    # Below pingan/v1/<township>/; `{station}` is one station's id.
    path: str
    publishers: tuple[Party, ...]
    subscribers: tuple[Party, ...]
    qos: int
    retained: bool
    schema: str  # docs/schema/<schema>.schema.json
    direction: str  # for people: docs/topics.md
    note: str
    # Who can read it without subscribing on purpose: mosquitto `pattern` ACL rules apply
    # to every account, and the stations' `all/cmd` rule names the township literally.
    also_readable: tuple[Party, ...] = ()

    def topic(self, township: str, station: str = "+") -> str:
        """The full topic; `station` "+" gives the filter for every station."""
        return f"{PREFIX}/{township}/{self.path.format(station=station)}"

    @property
    def per_station(self) -> bool:
        return "{station}" in self.path


_ST, _CE, _CO = Party.STATION, Party.CENTRE, Party.COUNTY

TABLE: tuple[TopicSpec, ...] = (
    TopicSpec("events", "{station}/events", (_ST,), (_CE, _CO), 1, False, "event",
              "station → township", "[event](schema/event.schema.json)"),
    TopicSpec("cmd_result", "{station}/cmd/result", (_ST,), (_CE, _CO), 1, False, "event",
              "station → township", "[event](schema/event.schema.json) of type `cmd.result`"),
    TopicSpec("state", "{station}/state", (_ST,), (_CE, _CO), 1, True, "state",
              "station → township",
              "[state](schema/state.schema.json); also the Last Will (`online: false`)"),
    TopicSpec("health", "{station}/health", (_ST,), (_CE, _CO), 1, True, "health",
              "station → township",
              "[health](schema/health.schema.json): telemetry every `health.interval_s`"),
    TopicSpec("cmd", "{station}/cmd", (_CE, _CO), (_ST,), 1, False, "command",
              "township → one station", "[command](schema/command.schema.json)"),
    TopicSpec("all_cmd", f"{ALL}/cmd", (_CE, _CO), (_ST,), 1, False, "command",
              "township → every station of the township",
              "[command](schema/command.schema.json); the centre's accounts can read it too "
              "(a mosquitto `pattern` rule applies to every account)", also_readable=(_CE,)),
    # Live speech (喊话): late audio is useless, so QoS 0 (nothing queued for an offline
    # station, nothing resent); the console's WebSocket relays the officer's Opus packets.
    TopicSpec("voice", "{station}/voice", (_CE,), (_ST,), 0, False, "voice",
              "township → one station",
              "[voice](schema/voice.schema.json): live speech, Opus packets (QoS 0: late "
              "audio is useless)"),
    TopicSpec("all_voice", f"{ALL}/voice", (_CE,), (_ST,), 0, False, "voice",
              "township → every station of the township",
              "[voice](schema/voice.schema.json); readable by the centre's accounts too, "
              "as `all/cmd`", also_readable=(_CE,)),
)

BY_NAME = {spec.name: spec for spec in TABLE}


def spec_for(rest: str) -> TopicSpec | None:
    """The spec of a per-station topic from what follows `<township>/<station>/`."""
    for spec in TABLE:
        if spec.per_station and spec.path == "{station}/" + rest:
            return spec
    return None


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

    def of(self, name: str) -> str:
        return BY_NAME[name].topic(self.township, self.station)

    @property
    def events(self) -> str:
        return self.of("events")

    @property
    def state(self) -> str:
        return self.of("state")

    @property
    def health(self) -> str:
        return self.of("health")

    @property
    def cmd(self) -> str:
        return self.of("cmd")

    @property
    def cmd_result(self) -> str:
        return self.of("cmd_result")

    @property
    def all_cmd(self) -> str:
        return self.of("all_cmd")

    def subscriptions(self) -> list[tuple[str, int]]:
        """What a station subscribes to: every topic the table gives it to read."""
        return [(self.of(s.name), s.qos) for s in TABLE if _ST in s.subscribers]

    def for_type(self, event_type: str) -> str:
        """Command results go to `…/cmd/result`, every other event to `…/events`."""
        return self.cmd_result if event_type == "cmd.result" else self.events


def township_filter(township: str = "+") -> str:
    """Every topic of a township (what a monitoring tool may subscribe to)."""
    return f"{PREFIX}/{township}/#"


def as_json() -> list[dict[str, object]]:
    """The table as data: docs/schema/topics.json, which the township console ships a
    copy of (it does not depend on this package) and makes its ACL, bridge and
    subscriptions from (pingan_centre.topics)."""
    return [{"name": t.name, "path": t.path, "publishers": [str(p) for p in t.publishers],
             "subscribers": [str(p) for p in t.subscribers], "qos": t.qos,
             "retained": t.retained, "schema": t.schema,
             "also_readable": [str(p) for p in t.also_readable]} for t in TABLE]


def markdown() -> str:
    """The topic table of docs/topics.md."""
    rows = ["| topic | direction | publisher | subscribers | QoS | retained | payload |",
            "|---|---|---|---|---|---|---|"]
    for spec in TABLE:
        path = spec.path.format(station="<station>")
        rows.append(
            f"| `{PREFIX}/<township>/{path}` | {spec.direction} | "
            f"{', '.join(spec.publishers)} | {', '.join(spec.subscribers)} | {spec.qos} | "
            f"{'yes' if spec.retained else 'no'} | {spec.note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
