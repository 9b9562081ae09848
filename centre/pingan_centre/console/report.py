"""The monthly report of the township (issue 23): alarms by outcome and response times,
broadcasts and their reach, station availability, self-tests. One set of figures
(`sections`) feeds both the printable page and the XLSX, so they cannot disagree.

Where each figure comes from:
- alarms: Alarm rows raised in the month; response times as stats.py defines them
  (genuine alarms and those not yet resolved by default, the rest on request).
- broadcasts: `broadcast.play` Command rows the console sent in the month, their
  cmd.result, and the stations' `audio.playback` events for those command ids.
- availability: the centre keeps a station's current state only, and its health
  reports for telemetry.KEEP (7 days). A station counts as available in a clock hour
  when anything from it (a health report, an event, its latest state) reached the
  township in that hour; stations report health every 5 minutes by default. Measured
  from the oldest health report kept (or the station's first word) to the month's end.
- self-tests: `selftest` events (on-site `pingan-edge selftest`) and panic presses sent
  as a self-test (`alarm.panic` with source "selftest")."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Min
from django.db.models.functions import TruncHour
from django.utils import timezone
from django.utils.translation import gettext as _

from pingan_centre.console import stats
from pingan_centre.console.models import Alarm, Command, Event, HealthReport, Station

HOUR = timedelta(hours=1)
Cell = str | int | float | None


@dataclass
class Section:
    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    note: str = ""
    # Columns holding ids or codes (not translated: marked translate="no" on the page).
    raw: tuple[int, ...] = ()


@dataclass
class Report:
    township: str
    month: str  # YYYY-MM
    start: datetime
    end: datetime
    counted: tuple[str, ...]
    sections: list[Section] = field(default_factory=list)

    def section(self, key: str) -> Section:
        return next(s for s in self.sections if s.key == key)


def parse_month(text: str, now: datetime) -> date:
    """The first day of month `text` (YYYY-MM); this month when it is not one."""
    try:
        year, month = (int(p) for p in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        local = timezone.localtime(now)
        return date(local.year, local.month, 1)


def bounds(first: date) -> tuple[datetime, datetime]:
    """The month in the township's time zone, [start, end)."""
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    zone = timezone.get_current_timezone()
    return (timezone.make_aware(datetime(first.year, first.month, 1), zone),
            timezone.make_aware(datetime(nxt.year, nxt.month, 1), zone))


def months(now: datetime, back: int = 24) -> list[str]:
    """The chooser: this month and the `back` before it, newest first."""
    local = timezone.localtime(now)
    year, month = local.year, local.month
    out = []
    for _i in range(back + 1):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return out


def _secs(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _pct(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 1)


def alarm_sections(start: datetime, end: datetime, counted: tuple[str, ...]) -> list[Section]:
    alarms = list(Alarm.objects.select_related("station")
                  .filter(raised_at__gte=start, raised_at__lt=end).order_by("raised_at"))
    labels = dict(Alarm.Outcome.choices)
    by_outcome: list[list[Cell]] = [
        [str(labels[o]), sum(1 for a in alarms if a.outcome == o)] for o in stats.OUTCOMES]
    by_outcome.append([_("not yet resolved"), sum(1 for a in alarms if not a.outcome)])
    by_outcome.append([_("total"), len(alarms)])
    phase_names = {"ack": _("to acknowledge"), "dispatch": _("to dispatch"),
                   "arrive": _("to arrive"), "resolve": _("to resolve")}
    groups: dict[str, list[Alarm]] = defaultdict(list)
    for a in alarms:
        if a.outcome in counted:
            groups[a.station.village or "-"].append(a)
            groups[""].append(a)
    times: list[list[Cell]] = []
    for key in sorted(groups, key=lambda k: (k == "", k)):
        members = groups[key]
        row: list[Cell] = [key or _("whole township"), len(members)]
        for phase in stats.PHASES:
            values = [(getattr(a, stats.FIELDS[phase]) - a.raised_at).total_seconds()
                      for a in members if getattr(a, stats.FIELDS[phase]) is not None]
            row += [_secs(stats.percentile(values, 50)), _secs(stats.percentile(values, 90)),
                    len(values)]
        times.append(row)
    header = [_("village"), _("alarms counted")]
    for phase in stats.PHASES:
        header += [f"{phase_names[phase]} p50 (s)", f"{phase_names[phase]} p90 (s)",
                   f"{phase_names[phase]} n"]
    left_out = [str(labels[o]) for o in stats.OPTIONAL if o not in counted]
    note = (_("Counted: genuine alarms and alarms not yet resolved, as the assessment "
              "counts them.") if left_out
            else _("Counted: every alarm, drills, tests and false alarms too."))
    return [Section("outcomes", _("Alarms by outcome"), [_("outcome"), _("alarms")],
                    by_outcome),
            Section("times", _("Response times"), header, times, note)]


def broadcast_section(start: datetime, end: datetime) -> Section:
    commands = list(Command.objects.filter(cmd="broadcast.play", created_at__gte=start,
                                           created_at__lt=end))
    ids = [c.pk for c in commands]
    finished: set[str] = set()
    for cmd_id, play_id in (Event.objects.filter(type="audio.playback",
                                                 payload__phase="finished")
                            .values_list("payload__cmd_id", "payload__play_id")):
        finished.update(i for i in (cmd_id, play_id) if i)
    finished &= set(ids)
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for c in commands:
        counts = per[c.station_id]
        counts[0] += 1
        counts[1] += c.result_ok is True
        counts[2] += c.result_ok is False
        counts[3] += c.pk in finished
    rows: list[list[Cell]] = [[name, *n, _pct(n[3], n[0])] for name, n in sorted(per.items())]
    total = [sum(n[i] for n in per.values()) for i in range(4)]
    rows.append([_("all stations"), *total, _pct(total[3], total[0])])
    # One compose (one officer, one moment) sends one command per station.
    broadcasts = len({(c.by, c.created_at) for c in commands})
    note = _("%(n)d broadcasts sent by the console; played means the station reported "
             "the broadcast finished.") % {"n": broadcasts}
    return Section("broadcasts", _("Broadcasts and their reach"),
                   [_("station"), _("commands sent"), _("accepted"), _("refused"),
                    _("played to the end"), _("reach %")], rows, note, raw=(0,))


def availability_section(start: datetime, end: datetime, now: datetime) -> Section:
    horizon = HealthReport.objects.aggregate(first=Min("received_at"))["first"]
    stop = min(end, now)
    # The first word ever heard from each station (its history starts there)...
    first: dict[str, datetime] = {}
    for model in (HealthReport, Event):
        for name, at in (model.objects.filter(received_at__lt=stop)
                         .values("station").annotate(at=Min("received_at"))
                         .values_list("station", "at")):
            first[name] = min(at, first.get(name, at))
    # ...and the clock hours of the month something arrived in, counted by the database.
    heard: dict[str, set[datetime]] = defaultdict(set)
    for model in (HealthReport, Event):
        for name, hour in (model.objects
                           .filter(received_at__gte=start, received_at__lt=stop)
                           .annotate(hour=TruncHour("received_at"))
                           .values_list("station", "hour").distinct()):
            heard[name].add(hour)
    rows: list[list[Cell]] = []
    for st in Station.objects.order_by("village", "name"):
        if st.state_at is not None and st.state_at < stop:
            first[st.name] = min(st.state_at, first.get(st.name, st.state_at))
            if st.state_at >= start:
                heard[st.name].add(start + HOUR * ((st.state_at - start) // HOUR))
        if st.name not in first or horizon is None:
            rows.append([st.name, st.village, None, 0, 0])
            continue
        # From the first whole hour with history for this station (and kept at all).
        begin = max(start, horizon, first[st.name])
        begin = start + HOUR * ((begin - start) // HOUR)
        hours = int(-((begin - stop) // HOUR)) if stop > begin else 0
        up = sum(1 for hour in heard[st.name] if begin <= hour < stop)
        rows.append([st.name, st.village, _pct(up, hours), up, hours])
    return Section("availability", _("Station availability"),
                   [_("station"), _("village"), _("available %"), _("hours heard from"),
                    _("hours measured")], rows,
                   _("An hour counts as available when a health report, an event or the "
                     "state of the station reached the township in it (stations report "
                     "health every 5 minutes). Health history is kept for 7 days: the hours "
                     "measured start at the oldest report kept."), raw=(0,))


def selftest_section(start: datetime, end: datetime) -> Section:
    per: dict[str, dict[str, Any]] = {}
    events = (Event.objects.filter(received_at__gte=start, received_at__lt=end)
              .filter(type__in=("selftest", "alarm.panic")).order_by("received_at", "seq"))
    for ev in events:
        if ev.type == "alarm.panic" and ev.payload.get("source") != "selftest":
            continue
        row = per.setdefault(ev.station_id, {"runs": 0, "passed": 0, "failed": 0,
                                             "presses": 0, "last": None, "checks": ""})
        if ev.type == "alarm.panic":
            row["presses"] += 1
            continue
        ok = bool(ev.payload.get("passed"))
        row["runs"] += 1
        row["passed" if ok else "failed"] += 1
        row["last"] = _("passed") if ok else _("failed")
        row["checks"] = ", ".join(r.get("check", "") for r in ev.payload.get("results", [])
                                  if r.get("status") == "fail")
    rows: list[list[Cell]] = [[name, r["runs"], r["passed"], r["failed"], r["presses"],
                               r["last"], r["checks"]] for name, r in sorted(per.items())]
    tested = {name for name, r in per.items() if r["runs"]}
    untested = Station.objects.exclude(name__in=tested).count()
    return Section("selftests", _("Self-tests"),
                   [_("station"), _("self-tests"), _("passed"), _("failed"),
                    _("test presses"), _("last result"), _("checks that failed")], rows,
                   _("%(n)d stations ran no self-test this month.") % {"n": untested},
                   raw=(0, 6))


def build(first: date, now: datetime, counted: tuple[str, ...] = stats.COUNTED) -> Report:
    start, end = bounds(first)
    report = Report(settings.CENTRE.township, f"{first:%Y-%m}", start, end, counted)
    report.sections = [*alarm_sections(start, end, counted), broadcast_section(start, end),
                       availability_section(start, end, now), selftest_section(start, end)]
    return report


def to_xlsx(report: Report) -> bytes:
    """One sheet per section, headers in the active language, the same figures."""
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    def cells(row: list[Cell]) -> list[Cell]:
        # A station sends what it likes in a self-test's text: control characters,
        # which a worksheet cannot hold, are dropped (the page shows them escaped).
        return [ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v for v in row]

    book = Workbook()
    cover = book.active
    cover.title = _("Report")[:31]
    cover.append([_("Monthly report"), report.township, report.month])
    for section in report.sections:
        sheet = book.create_sheet(section.title[:31])
        sheet.append(section.header)
        for row in section.rows:
            sheet.append(cells(row))
        if section.note:
            sheet.append([])
            sheet.append([section.note])
    buf = io.BytesIO()
    book.save(buf)
    return buf.getvalue()
