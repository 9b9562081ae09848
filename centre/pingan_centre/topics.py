"""The topic table as the township uses it: loaded from the copy this package ships
(console/schemas/topics.json = docs/schema/topics.json, written from
edge/contract/topics.py; tests/test_contract.py keeps them identical), so the township
runs without the unit's package. The centre's subscriptions and routing, the broker ACL
(`broker.provision`) and the county bridge's `topic` lines are all made here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

PREFIX = "pingan/v1"
STATION, CENTRE, COUNTY = "station", "centre", "county"


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    path: str  # below pingan/v1/<township>/; `{station}` is one station's id
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    qos: int
    retained: bool
    schema: str
    # Readable by these too, without being a subscriber (edge/contract/topics.py).
    also_readable: tuple[str, ...] = ()

    def topic(self, township: str, station: str = "+") -> str:
        return f"{PREFIX}/{township}/{self.path.format(station=station)}"

    @property
    def per_station(self) -> bool:
        return "{station}" in self.path


@cache
def table() -> tuple[Spec, ...]:
    text = resources.files("pingan_centre.console").joinpath(
        "schemas/topics.json").read_text(encoding="utf-8")
    return tuple(Spec(name=row["name"], path=row["path"],
                      publishers=tuple(row["publishers"]),
                      subscribers=tuple(row["subscribers"]), qos=int(row["qos"]),
                      retained=bool(row["retained"]), schema=row["schema"],
                      also_readable=tuple(row.get("also_readable", ())))
                 for row in json.loads(text))


def by_name(name: str) -> Spec:
    return next(s for s in table() if s.name == name)


def station_topic(name: str, township: str, station: str) -> str:
    """e.g. station_topic("cmd", "t01", "v001") = pingan/v1/t01/v001/cmd."""
    return by_name(name).topic(township, station)


def spec_for(rest: str) -> Spec | None:
    """The spec of a per-station topic from what follows `<township>/<station>/`."""
    for spec in table():
        if spec.per_station and spec.path == "{station}/" + rest:
            return spec
    return None


def centre_subscriptions(township: str, share_group: str) -> list[tuple[str, int]]:
    """What the township centre subscribes to. Non-retained topics through a shared
    subscription (each message reaches one process of the group); retained ones directly,
    since a broker never sends retained messages to a shared subscription (storing them
    again is harmless)."""
    subs = []
    for spec in table():
        if CENTRE in spec.subscribers:
            topic = spec.topic(township)
            subs.append((topic if spec.retained else f"$share/{share_group}/{topic}",
                         spec.qos))
    return subs


def acl_station_rules(township: str) -> list[str]:
    """mosquitto ACL lines for every station (username = `<township>/<station>` = %u)."""
    lines = []
    for spec in table():
        target = (f"{PREFIX}/%u/{spec.path.removeprefix('{station}/')}" if spec.per_station
                  else spec.topic(township))
        if STATION in spec.publishers:
            lines.append(f"pattern write {target}")
        if STATION in spec.subscribers:
            lines.append(f"pattern read {target}")
    return lines


def _covers(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    return len(p) == len(t) and all(a in ("+", b) for a, b in zip(p, t, strict=True))


def _writes(party: str, township: str) -> list[str]:
    """The topics `party` publishes; `<station>/cmd` over "+" also covers `all/cmd`."""
    written = [spec.topic(township) for spec in table() if party in spec.publishers]
    return [t for t in written if not any(o != t and _covers(o, t) for o in written)]


def acl_party_rules(party: str, township: str) -> list[str]:
    """mosquitto ACL `topic` lines for a centre or county account over `township`
    ("+" for a county over every township)."""
    reads = [f"topic read {spec.topic(township)}" for spec in table()
             if party in spec.subscribers]
    return reads + [f"topic write {t}" for t in _writes(party, township)]


def bridge_topics(township: str) -> list[str]:
    """The `topic` lines of a township broker's bridge to its county: what a station
    sends that the county reads goes out; what the county sends comes in."""
    out = [f"topic {spec.topic(township)} out {spec.qos}" for spec in table()
           if COUNTY in spec.subscribers and STATION in spec.publishers]
    qos = {spec.topic(township): spec.qos for spec in table()}
    return out + [f"topic {t} in {qos[t]}" for t in _writes(COUNTY, township)]
