"""Station health at the township: store each `…/health` report (7 days of history, the
newest per station), turn readings into problems that say what to do, and draw the
station page's small charts as inline SVG (no script, no CDN)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils.translation import gettext_lazy as _

from pingan_centre.console.models import HealthLatest, HealthReport, Station

KEEP = timedelta(days=7)

# Thresholds (docs/topics.md, Health; centre/README.md).
DISK_MIN_FRACTION = 0.10
DISK_MIN_MB = 1024  # when a station does not say its disk's size
TEMP_MAX_C = 80.0
OLDEST_PENDING_MAX_S = 600
UNDER_VOLTAGE_NOW = 0x1
THROTTLED_NOW = 0x4
NO_SIGNAL_REG = ("searching", "denied", "none", "unknown")


def store(data: dict[str, Any], now: datetime) -> None:
    """One validated health report (inside the ingest transaction). A retained report
    delivered again (a reconnect) is not stored twice; history older than KEEP goes."""
    station = data["station"]
    latest = HealthLatest.objects.filter(pk=station).first()
    if latest is not None and latest.ts == data["ts"]:
        return
    HealthReport.objects.create(station_id=station, ts=data["ts"], received_at=now,
                                data=data)
    HealthLatest.objects.update_or_create(
        station_id=station, defaults={"ts": data["ts"], "received_at": now, "data": data})
    HealthReport.objects.filter(station_id=station, received_at__lt=now - KEEP).delete()


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    message: str
    action: str


def findings(data: dict[str, Any]) -> list[Finding]:
    """What in one report needs someone, each with what to do (in the active language)."""
    found: list[Finding] = []
    free, total = data.get("disk_free_mb"), data.get("disk_total_mb")
    if isinstance(free, int):
        if isinstance(total, int) and total > 0:
            low = free < total * DISK_MIN_FRACTION
            pct = f"{100 * free / total:.0f} %"
        else:
            low, pct = free < DISK_MIN_MB, f"{free} MB"
        if low:
            found.append(Finding("disk_low", str(_("disk almost full (%(free)s free)")
                                                 % {"free": pct}),
                                 str(_("send a technician: free space or replace the SD "
                                       "card before events can no longer be stored"))))
    temp = data.get("cpu_temp_c")
    if isinstance(temp, int | float) and temp > TEMP_MAX_C:
        found.append(Finding("too_hot", str(_("too hot (%(t).0f °C)") % {"t": temp}),
                             str(_("check the enclosure's ventilation and shade"))))
    bits = data.get("throttled")
    if isinstance(bits, int) and bits & UNDER_VOLTAGE_NOW:
        found.append(Finding("under_voltage", str(_("under-voltage")),
                             str(_("replace the power supply or its cable (5 V, 3 A)"))))
    elif isinstance(bits, int) and bits & THROTTLED_NOW:
        found.append(Finding("throttled", str(_("throttled")),
                             str(_("check the power supply and the temperature"))))
    modem = data.get("modem")
    if isinstance(modem, dict) and (modem.get("state") != "ok"
                                    or modem.get("reg") in NO_SIGNAL_REG):
        found.append(Finding("no_signal", str(_("no mobile signal")),
                             str(_("check the SIM, the antenna and the operator's coverage; "
                                   "SMS fallback cannot work meanwhile"))))
    oldest = data.get("outbox_oldest_s")
    if isinstance(oldest, int) and oldest > OLDEST_PENDING_MAX_S:
        found.append(Finding("backlog", str(_("events waiting %(m)d min")
                                            % {"m": oldest // 60}),
                             str(_("the link is not delivering: check the station's network "
                                   "and its state problems"))))
    if data.get("clock_synced") is False:
        found.append(Finding("clock", str(_("clock not synced")),
                             str(_("check the station's NTP / network; its times are "
                                   "unreliable until then"))))
    return found


REG_LABELS = {"home": _("registered (home)"), "roaming": _("roaming"),
              "searching": _("searching for a network"), "denied": _("registration denied"),
              "unknown": _("registration unknown"), "none": _("not registered")}


def reg_label(data: dict[str, Any]) -> str:
    modem = data.get("modem")
    reg = modem.get("reg") if isinstance(modem, dict) else None
    return str(REG_LABELS.get(str(reg), reg or "—"))


def latest_by_station() -> dict[str, HealthLatest]:
    return {h.station_id: h for h in HealthLatest.objects.all()}


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    unit: str
    svg: str
    last: str


WIDTH, HEIGHT, PAD = 320, 60, 2


def _svg(points: list[tuple[float, float]], start: datetime, end: datetime,
         limit: float | None) -> str:
    """A polyline of (epoch seconds, value) over [start, end]: pure markup, autoescape-safe
    (only numbers go in)."""
    if not points:
        return (f'<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
                f'height="{HEIGHT}" role="img"></svg>')
    values = [v for _, v in points] + ([limit] if limit is not None else [])
    lo, hi = min(0.0, *values), max(values)
    span = (hi - lo) or 1.0
    t0, t1 = start.timestamp(), end.timestamp()
    width = (t1 - t0) or 1.0

    def xy(t: float, v: float) -> str:
        x = PAD + (WIDTH - 2 * PAD) * (t - t0) / width
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - lo) / span
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    parts = [f'<svg class="spark" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img">',
             f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="none" '
             f'stroke="#ccc"/>']
    if limit is not None:
        y = xy(t0, limit).split(",")[1]
        parts.append(f'<line x1="0" y1="{y}" x2="{WIDTH}" y2="{y}" stroke="#c00" '
                     f'stroke-dasharray="4 3"/>')
    parts.append(f'<polyline fill="none" stroke="#246" stroke-width="1.5" points="{line}"/>')
    x, y = xy(*points[-1]).split(",")  # the newest reading, visible even when alone
    parts.append(f'<circle cx="{x}" cy="{y}" r="3" fill="#246"/>')
    parts.append("</svg>")
    return "".join(parts)


def charts(station: Station, now: datetime) -> list[Chart]:
    """The last KEEP of health as small charts (oldest left)."""
    start = now - KEEP
    reports = list(HealthReport.objects.filter(station=station, received_at__gte=start)
                   .order_by("received_at").values_list("received_at", "data"))

    def series(key: str) -> list[tuple[float, float]]:
        out = []
        for at, data in reports:
            value = data.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                out.append((at.timestamp(), float(value)))
        return out

    def disk_pct() -> list[tuple[float, float]]:
        out = []
        for at, data in reports:
            free, total = data.get("disk_free_mb"), data.get("disk_total_mb")
            if isinstance(free, int) and isinstance(total, int) and total > 0:
                out.append((at.timestamp(), 100.0 * free / total))
        return out

    def signal() -> list[tuple[float, float]]:
        out = []
        for at, data in reports:
            modem = data.get("modem") or {}
            dbm = modem.get("csq_dbm") if isinstance(modem, dict) else None
            if isinstance(dbm, int | float):
                out.append((at.timestamp(), float(dbm)))
        return out

    specs: list[tuple[str, str, list[tuple[float, float]], float | None]] = [
        (str(_("Temperature")), "°C", series("cpu_temp_c"), TEMP_MAX_C),
        (str(_("Disk free")), "%", disk_pct(), 100 * DISK_MIN_FRACTION),
        (str(_("Pending events")), "", series("outbox_pending"), None),
        (str(_("Oldest pending")), "s", series("outbox_oldest_s"),
         float(OLDEST_PENDING_MAX_S)),
        (str(_("Signal")), "dBm", signal(), None),
        (str(_("Load")), "", series("load1"), None),
    ]
    return [Chart(title, unit, _svg(points, start, now, limit),
                  f"{points[-1][1]:g}" if points else "—")
            for title, unit, points, limit in specs]


def annotate(rows: list[Station]) -> None:
    """Give each station of the grid its newest report (`tele`) and what it finds."""
    latest = latest_by_station()
    for st in rows:
        tele = latest.get(st.name)
        st.tele = tele.data if tele else None  # type: ignore[attr-defined]
        st.tele_at = tele.received_at if tele else None  # type: ignore[attr-defined]
        st.findings = findings(tele.data) if tele else []  # type: ignore[attr-defined]
        st.tele_reg = reg_label(tele.data) if tele else ""  # type: ignore[attr-defined]
