"""Staged rollout of a release (issue 22): canary stations first, then the rest; halted
as soon as a canary rolls back (or refuses or fails the release).

Nothing here signs anything: the operator pastes the descriptor the signing PC wrote
(`pingan-edge-V.release.json`: version, size, sha256, min_data_schema, rollback,
signature) and the URL where the township's HTTP server serves the bundle. Each offer is
an ordinary `update.offer` Command, with an id that names its rollout and stage
(`ro:<rollout>:<c|r>:<station>`), so the rollout's whole state is read back from the
commands sent and the `update.*` events the stations report; every step is audited.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils.translation import gettext_lazy as _

from pingan_centre.console.lifecycle import NotAllowed, audit
from pingan_centre.console.link import Effects
from pingan_centre.console.models import Command, Event, Station

FIELDS = ("version", "size", "sha256", "min_data_schema", "rollback", "compatible",
          "signature")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+){1,3}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The last word a station said about an offer, as the page shows it. Only BAD halts a
# rollout and only DONE counts as done: `waiting` (installed, the reboot held while an
# alarm is open or the siren sounds; the reason beside it) is neither.
DONE = {"update.committed": "committed"}
BAD = {"update.rolled_back": "rolled_back", "update.refused": "refused",
       "update.failed": "failed"}
STEPS = {"update.offered": "offered", "update.downloading": "downloading",
         "update.verified": "verified", "update.installed": "installed",
         "update.waiting": "waiting", "update.rebooting": "rebooting", **DONE, **BAD}
# What an officer reads for each result, in the page's language.
LABELS = {"sent": _("sent"), "not_sent": _("not sent yet"), "offered": _("offered"),
          "downloading": _("downloading"), "verified": _("verified"),
          "installed": _("installed"), "waiting": _("waiting to reboot"),
          "rebooting": _("rebooting"),
          "committed": _("committed"), "rolled_back": _("rolled back"),
          "refused": _("refused"), "failed": _("failed")}


class BadDescriptor(ValueError):
    """The pasted descriptor is not one the signing PC writes."""


def parse_descriptor(text: str) -> dict[str, Any]:
    """Check the shape (the stations check the signature): what goes into the offer."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BadDescriptor(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or any(k not in doc for k in FIELDS):
        raise BadDescriptor(f"a release descriptor has {', '.join(FIELDS)}")
    if not (isinstance(doc["version"], str) and _VERSION.match(doc["version"])):
        raise BadDescriptor(f"version {doc['version']!r} is not a release version")
    if not (isinstance(doc["sha256"], str) and _SHA256.match(doc["sha256"])):
        raise BadDescriptor("sha256 is not 64 lowercase hex digits")
    if not isinstance(doc["size"], int) or doc["size"] < 1:
        raise BadDescriptor("size must be a positive number of bytes")
    return {k: doc[k] for k in FIELDS}


@dataclass
class StationResult:
    station: str
    stage: str  # canary | rest
    cmd_id: str
    result: str = "sent"
    reason: dict[str, str] = field(default_factory=dict)  # {zh, en}, as the station sent it

    @property
    def label(self) -> str:
        return str(LABELS.get(self.result, self.result))


@dataclass
class Rollout:
    id: str
    version: str
    started: datetime
    by: str
    results: list[StationResult] = field(default_factory=list)

    @property
    def canaries(self) -> list[StationResult]:
        return [r for r in self.results if r.stage == "canary"]

    @property
    def rest(self) -> list[StationResult]:
        return [r for r in self.results if r.stage == "rest"]

    @property
    def halted(self) -> bool:
        return any(r.result in BAD.values() for r in self.canaries)

    @property
    def canaries_committed(self) -> bool:
        return bool(self.canaries) and all(r.result == "committed" for r in self.canaries)

    @property
    def state(self) -> str:
        if self.halted:
            return "halted"
        if self.rest:
            return "rest"
        return "canaries_committed" if self.canaries_committed else "canary"


def _offer(station: Station, cmd_id: str, descriptor: dict[str, Any], url: str, by: str,
           now: datetime, effects: Effects) -> None:
    payload = {"cmd": "update.offer", "id": cmd_id, "by": by[:64], "url": url, **descriptor}
    command = Command.objects.create(id=cmd_id, station=station, cmd="update.offer",
                                     payload=payload, by=by, created_at=now)
    topic = f"pingan/v1/{station.township}/{station.name}/cmd"

    def publish() -> None:
        if effects.send(topic, payload):
            Command.objects.filter(pk=command.pk).update(sent=True)

    transaction.on_commit(publish)


def start(descriptor_text: str, url: str, canaries: Iterable[str], by: str, now: datetime,
          effects: Effects) -> str:
    """Offer the release to the canary stations; returns the rollout's id."""
    descriptor = parse_descriptor(descriptor_text)
    if not url.startswith(("http://", "https://")):
        raise BadDescriptor("the bundle URL must be http:// or https:// (the township's "
                            "own server)")
    names = sorted(set(canaries))
    stations = list(Station.objects.filter(name__in=names))
    if not stations or len(stations) != len(names):
        raise NotAllowed("choose at least one canary station, from the stations list")
    rollout_id = f"{descriptor['version']}-{uuid.uuid4().hex[:8]}"
    with transaction.atomic():
        for st in stations:
            _offer(st, f"ro:{rollout_id}:c:{st.name}", descriptor, url, by, now, effects)
        audit(by, "rollout.start", rollout_id, now, version=descriptor["version"], url=url,
              canaries=names, sha256=descriptor["sha256"])
    return rollout_id


def advance(rollout_id: str, by: str, now: datetime, effects: Effects) -> list[str]:
    """Offer the release to every other station once all canaries committed. Refused
    (and audited) while a canary is still going, or when one rolled back."""
    rollout = get(rollout_id)
    if rollout is None:
        raise NotAllowed(f"no rollout {rollout_id}")
    if rollout.halted or not rollout.canaries_committed or rollout.rest:
        why = ("halted: a canary rolled back, refused or failed the release" if rollout.halted
               else "already offered to the rest" if rollout.rest
               else "not every canary has committed yet")
        audit(by, "rollout.refused", rollout_id, now, why=why)
        raise NotAllowed(why)
    first = Command.objects.filter(id=rollout.canaries[0].cmd_id).first()
    assert first is not None
    descriptor = {k: first.payload[k] for k in FIELDS}
    url = first.payload["url"]
    canary_names = {r.station for r in rollout.canaries}
    rest = list(Station.objects.exclude(name__in=canary_names).order_by("name"))
    with transaction.atomic():
        for st in rest:
            _offer(st, f"ro:{rollout_id}:r:{st.name}", descriptor, url, by, now, effects)
        audit(by, "rollout.rest", rollout_id, now, stations=[s.name for s in rest])
    return [s.name for s in rest]


def get(rollout_id: str) -> Rollout | None:
    found = rollouts(prefix=f"ro:{rollout_id}:")
    return found[0] if found else None


def rollouts(prefix: str = "ro:") -> list[Rollout]:
    """Every rollout, newest first, each station's result from its `update.*` events."""
    commands = list(Command.objects.filter(cmd="update.offer", id__startswith=prefix)
                    .order_by("created_at", "id"))
    last: dict[str, tuple[str, dict[str, str]]] = {}
    events = Event.objects.filter(type__startswith="update.",
                                  payload__cmd_id__in=[c.id for c in commands]).order_by(
        "received_at", "seq")
    for ev in events:
        kind = STEPS.get(ev.type)
        if kind is not None:
            last[ev.payload["cmd_id"]] = (kind, ev.payload.get("reason") or {})
    found: dict[str, Rollout] = {}
    for c in commands:
        _, rollout_id, stage, station = c.id.split(":", 3)
        rollout = found.setdefault(rollout_id, Rollout(
            rollout_id, c.payload.get("version", "?"), c.created_at, c.by))
        result, reason = last.get(c.id, ("sent" if c.sent else "not_sent", {}))
        rollout.results.append(StationResult(station, "canary" if stage == "c" else "rest",
                                             c.id, result, reason))
    return sorted(found.values(), key=lambda r: r.started, reverse=True)


def station_versions() -> list[dict[str, Any]]:
    """Every station: its running version and its last update result."""
    rows = []
    for st in Station.objects.order_by("name"):
        ev = (Event.objects.filter(station=st, type__startswith="update.")
              .exclude(type="update.downloading").order_by("-received_at", "-seq").first())
        rows.append({"station": st.name, "village": st.village, "version": st.version,
                     "online": st.online,
                     "last": STEPS.get(ev.type, ev.type) if ev else "",
                     "last_label": (str(LABELS.get(STEPS.get(ev.type, ""), ev.type))
                                    if ev else ""),
                     "last_version": ev.payload.get("version", "") if ev else "",
                     "last_at": ev.received_at if ev else None,
                     "reason": (ev.payload.get("reason") or {}) if ev else {}})
    return rows
