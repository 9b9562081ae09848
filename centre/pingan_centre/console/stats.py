"""Response times for 考核: acknowledge, dispatch, arrive, resolve; p50/p90 by group."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from pingan_centre.console.models import Alarm

PHASES = ("ack", "dispatch", "arrive", "resolve")
FIELDS = {"ack": "acked_at", "dispatch": "dispatched_at", "arrive": "on_scene_at",
          "resolve": "resolved_at"}
OUTCOMES = [value for value, _ in Alarm.Outcome.choices]


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: a figure that really happened)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Row:
    key: str
    count: int
    outcomes: dict[str, int]
    times: dict[str, tuple[float | None, float | None, int]]  # phase -> (p50, p90, n)


def _key(alarm: Alarm, by: str) -> str:
    if by == "village":
        return alarm.station.village or "-"
    if by == "station":
        return alarm.station_id
    return timezone.localtime(alarm.raised_at).strftime("%Y-%m")


# 考核 counts genuine alarms: a drill, a test or a false alarm closed in 0.2 s must not
# set the township's response times (issue 19). Alarms not yet resolved have no outcome
# yet and count until they are told otherwise.
COUNTED = ("genuine", "")
OPTIONAL = ("false", "drill", "test")


def included(asked: Iterable[str]) -> tuple[str, ...]:
    """The outcomes to count: always COUNTED, plus those of OPTIONAL asked for ("all":
    every one). Anything else asked is ignored."""
    wanted: set[str] = set()
    for item in asked:
        wanted.update(OPTIONAL if item == "all" else item.split(","))
    return COUNTED + tuple(o for o in OPTIONAL if o in wanted)


def table(by: str, since: datetime | None = None,
          outcomes: Iterable[str] = COUNTED) -> list[Row]:
    alarms: Iterable[Alarm] = (Alarm.objects.select_related("station")
                               .filter(outcome__in=list(outcomes)).order_by("raised_at"))
    if since is not None:
        alarms = alarms.filter(raised_at__gte=since)  # type: ignore[attr-defined]
    groups: dict[str, list[Alarm]] = defaultdict(list)
    for alarm in alarms:
        groups[_key(alarm, by)].append(alarm)
    rows = []
    for key in sorted(groups):
        members = groups[key]
        times = {}
        for phase in PHASES:
            values = [(getattr(a, FIELDS[phase]) - a.raised_at).total_seconds()
                      for a in members if getattr(a, FIELDS[phase]) is not None]
            times[phase] = (percentile(values, 50), percentile(values, 90), len(values))
        outcomes = {o: sum(1 for a in members if a.outcome == o) for o in OUTCOMES}
        rows.append(Row(key, len(members), outcomes, times))
    return rows


def header() -> list[str]:
    cols = ["group", "alarms"]
    for phase in PHASES:
        cols += [f"{phase}_p50_s", f"{phase}_p90_s", f"{phase}_n"]
    return cols + [f"outcome_{o}" for o in OUTCOMES]


def flat(rows: list[Row]) -> list[list[Any]]:
    out = []
    for row in rows:
        line: list[Any] = [row.key, row.count]
        for phase in PHASES:
            p50, p90, n = row.times[phase]
            line += [None if p50 is None else round(p50, 1),
                     None if p90 is None else round(p90, 1), n]
        out.append(line + [row.outcomes[o] for o in OUTCOMES])
    return out


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header())
    writer.writerows(flat(rows))
    return buf.getvalue()


def to_xlsx(sheets: dict[str, list[Row]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        sheet.append(header())
        for line in flat(rows):
            sheet.append(line)
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()


def bars(rows: list[Row], phase: str, width: int = 640) -> dict[str, Any]:
    """An inline SVG bar chart's geometry: p50 and p90 per group for one phase."""
    bar_h, gap, label_w = 22, 10, 160
    peak = max([r.times[phase][1] or 0 for r in rows] + [1.0])
    items = []
    for i, r in enumerate(rows):
        p50, p90, _ = r.times[phase]
        y = i * (bar_h + gap)
        items.append({"label": r.key, "y": y, "ty": y + 16,
                      "w50": (p50 or 0) / peak * (width - label_w - 80),
                      "w90": (p90 or 0) / peak * (width - label_w - 80),
                      "p50": p50, "p90": p90})
    return {"items": items, "height": max(1, len(rows)) * (bar_h + gap),
            "label_w": label_w, "width": width}
