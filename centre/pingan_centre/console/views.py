"""The screens: duty (open alarms, live), stations, one alarm, statistics, handover,
quarantine, audit. Every change goes through lifecycle.act (permission checked there)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from datetime import datetime, timedelta
from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import Case, Count, IntegerField, Q, When
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from pingan_centre.console import lifecycle, live, runtime, stats, telemetry
from pingan_centre.console.models import (
    Alarm,
    AuditEntry,
    Quarantined,
    Station,
    Transition,
)
from pingan_centre.console.store import snapshot_bytes

STALE = timedelta(seconds=settings.CENTRE.stale_after_s)
FULL_S = 30.0  # every live screen gets a full snapshot this often (station health)
PING_S = 15.0  # an SSE comment at least this often keeps proxies from closing the stream
URGENCY = Case(When(state="new", then=0), When(state="acknowledged", then=1),
               When(state="dispatched", then=2), When(state="on_scene", then=3),
               default=4, output_field=IntegerField())


def health(station: Station, now: datetime) -> str:
    """online / silent (no word within the state interval) / offline (Last Will)."""
    if not station.online:
        return "offline"
    if station.last_seen is None or now - station.last_seen > STALE:
        return "silent"
    return "online"


ORDER = ("urgency", "-escalation", "-raised_at")


def open_alarms(ids: Collection[int] | None = None) -> list[Alarm]:
    """The open alarms as the duty screen shows them (most urgent first), or those of
    them named by `ids`."""
    query = Alarm.objects.filter(state__in=Alarm.OPEN)
    if ids is not None:
        query = query.filter(pk__in=ids)
    alarms: list[Alarm] = list(query.select_related("station").annotate(urgency=URGENCY)
                               .order_by(*ORDER))
    now = timezone.now()
    for alarm in alarms:
        alarm.health = health(alarm.station, now)  # type: ignore[attr-defined]
        alarm.last_result = (alarm.commands.filter(result_at__isnull=False)  # type: ignore[attr-defined]
                             .order_by("-result_at").first())
    return alarms


@login_required
def duty(request: HttpRequest) -> HttpResponse:
    return render(request, "console/duty.html", {"alarms": open_alarms(), "page": "duty",
                                                 "outcomes": Alarm.Outcome.choices})


@login_required
def cards(request: HttpRequest) -> HttpResponse:
    return render(request, "console/cards.html", {"alarms": open_alarms(),
                                                  "outcomes": Alarm.Outcome.choices})


@login_required
def alarms_json(request: HttpRequest) -> JsonResponse:
    data = [{"id": a.pk, "station": a.station_id, "village": a.station.village,
             "name": a.station.label,
             "state": a.state, "presses": a.presses, "escalation": a.escalation,
             "raised_at": a.raised_at.isoformat(), "first_event": a.first_event}
            for a in open_alarms()]
    return JsonResponse({"alarms": data})


def fragments(request: HttpRequest, ids: Collection[int] | None) -> dict[str, Any]:
    """The cards of the alarms `ids` (None: all) as this request's user sees them, in
    its language, and the order of every open alarm on the screen. An id in `ids` that
    is not in `order` is an alarm that closed: the browser drops its card."""
    with translation.override(getattr(request, "LANGUAGE_CODE", settings.LANGUAGE_CODE)):
        alarms = open_alarms(ids)
        if ids is None:
            order = [a.pk for a in alarms]
        else:
            order = list(Alarm.objects.filter(state__in=Alarm.OPEN).annotate(urgency=URGENCY)
                         .order_by(*ORDER).values_list("pk", flat=True))
        cards = {str(a.pk): render_to_string("console/card.html", {
            "a": a, "outcomes": Alarm.Outcome.choices}, request=request) for a in alarms}
    return {"cards": cards, "order": order}


def _logged_in(request: HttpRequest) -> bool:
    """The stream's session still stands (not logged out elsewhere, not expired)."""
    engine = import_module(settings.SESSION_ENGINE)
    key = request.session.session_key
    data = engine.SessionStore(key).load() if key else {}
    return bool(data.get(SESSION_KEY)) and data.get(SESSION_KEY) == request.session.get(
        SESSION_KEY)


def _sse(kind: str, version: int, data: dict[str, Any]) -> str:
    body = json.dumps({"v": version, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"id: {version}\nevent: {kind}\ndata: {body}\n\n"


async def stream(request: HttpRequest) -> StreamingHttpResponse | HttpResponse:
    """Server-sent events that carry the change itself.

    On connect (and on every reconnect, whatever Last-Event-ID says) a `snapshot`: every
    open card; then a `change` for each batch the change reader hands this stream: the
    changed cards rendered for this user, and the order of all open alarms. Each event's
    id is the version (the last Transition id) it brings the screen to. A stream that
    fell behind (its inbox full, see live.Inbox) gets a snapshot instead; so does every
    stream every FULL_S, for station health, which changes no version. The browser
    applies what it gets and asks for nothing more."""
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponseForbidden()
    changes = runtime.of(request).changes
    if changes is None:
        return HttpResponse("live screens are off in this process", status=503)
    if changes.streams >= changes.max_streams:
        return HttpResponse("too many live screens are open", status=503)
    render = sync_to_async(fragments)
    still_in = sync_to_async(_logged_in)

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            inbox = changes.subscribe(loop)
        except live.Busy:
            return
        try:
            yield "retry: 1000\n\n"
            batch: live.Batch | None = live.Batch(changes.version, None)
            full_at = loop.time()
            while not inbox.closed:
                if batch is not None and batch.alarms is None:
                    inbox.take()  # what waited is in the snapshot
                    version = changes.version
                    yield _sse("snapshot", version, await render(request, None))
                    full_at = loop.time()
                elif batch is not None:
                    yield _sse("change", batch.version, await render(request, batch.alarms))
                wait = full_at + FULL_S - loop.time()
                batch = await inbox.next(min(PING_S, max(wait, 0.0)))
                if batch is None and loop.time() >= full_at + FULL_S:
                    if not await still_in(request):
                        return  # the browser reconnects, is refused, and reloads
                    batch = live.Batch(changes.version, None)
                elif batch is None and not inbox.closed:
                    yield ": ping\n\n"
        finally:
            changes.unsubscribe(inbox)

    response = StreamingHttpResponse(events(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@require_POST
@login_required
def act(request: HttpRequest, alarm_id: int, action: str) -> HttpResponse:
    post = request.POST
    fields: dict[str, Any] = {}
    if action == "dispatch":
        fields["to"] = post.get("to", "")
    elif action == "resolve":
        fields["outcome"] = post.get("outcome", "")
    elif action == "shelve":
        minutes = int(post["minutes"]) if post.get("minutes", "").isdigit() else 0
        fields["until"] = timezone.now() + timedelta(minutes=minutes)
        fields["reason"] = post.get("reason", "")
    try:
        lifecycle.act(alarm_id, action, request.user, timezone.now(), runtime.of(request),
                      post.get("note", ""), **fields)
    except lifecycle.NotAllowed as why:
        return HttpResponseForbidden(str(why))
    except Alarm.DoesNotExist:
        return HttpResponse(status=404)
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"ok": True})
    return redirect(post.get("next") or "duty")


@login_required
def alarm_detail(request: HttpRequest, alarm_id: int) -> HttpResponse:
    alarm = get_object_or_404(Alarm.objects.select_related("station"), pk=alarm_id)
    return render(request, "console/alarm.html", {
        "alarm": alarm, "page": "duty", "outcomes": Alarm.Outcome.choices,
        "transitions": alarm.transitions.all(),
        "commands": alarm.commands.order_by("created_at"),
        "events": alarm.events.order_by("received_at")})


@login_required
def snapshot(request: HttpRequest, alarm_id: int) -> HttpResponse:
    alarm = get_object_or_404(Alarm.objects.select_related("snapshot"), pk=alarm_id)
    picture = b"" if alarm.snapshot is None else snapshot_bytes(alarm.snapshot)
    if not picture:
        return HttpResponse(status=404)
    return HttpResponse(picture, content_type="image/jpeg")


@login_required
def stations(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    village = request.GET.get("village", "")
    problem = request.GET.get("problem", "")
    rows = list(Station.objects.all())
    for st in rows:
        st.health = health(st, now)  # type: ignore[attr-defined]
        st.open_alarms = 0  # type: ignore[attr-defined]
    counts = dict(Alarm.objects.filter(state__in=Alarm.OPEN).values("station")
                  .annotate(n=Count("id")).values_list("station", "n"))
    villages = sorted({st.village for st in rows})
    # Each problem code by what it means, in the stations' own two languages.
    labels: dict[str, Any] = {"offline": _("offline"), "silent": _("silent")}
    for st in rows:
        for p in st.problems:
            labels.setdefault(p["code"], p["message"])
    problems = sorted(labels.items())
    if village:
        rows = [st for st in rows if st.village == village]
    if problem:
        rows = [st for st in rows if problem == st.health  # type: ignore[attr-defined]
                or any(p["code"] == problem for p in st.problems)]
    for st in rows:
        st.open_alarms = counts.get(st.name, 0)  # type: ignore[attr-defined]
    telemetry.annotate(rows)
    healths = [st.health for st in rows]  # type: ignore[attr-defined]
    summary = {h: healths.count(h) for h in ("online", "silent", "offline")}
    return render(request, "console/stations.html", {
        "stations": rows, "villages": villages, "problems": problems, "village": village,
        "problem": problem, "summary": summary, "page": "stations"})


def _since(request: HttpRequest) -> datetime | None:
    months = request.GET.get("months", "")
    if months.isdigit():
        return timezone.now() - timedelta(days=31 * int(months))
    return None


@login_required
def statistics(request: HttpRequest) -> HttpResponse:
    by = request.GET.get("by", "village")
    if by not in ("village", "station", "month"):
        by = "village"
    counted = stats.included(request.GET.getlist("include"))
    rows = stats.table(by, _since(request), counted)
    charts = [(phase, stats.bars(rows, phase)) for phase in ("ack", "resolve")]
    totals = {o: sum(r.outcomes[o] for r in rows) for o in stats.OUTCOMES}
    left_out = Alarm.objects.exclude(outcome__in=counted)
    since = _since(request)
    if since is not None:
        left_out = left_out.filter(raised_at__gte=since)
    return render(request, "console/stats.html", {
        "rows": rows, "by": by, "charts": charts, "totals": totals, "page": "stats",
        "outcomes": Alarm.Outcome.choices, "phases": stats.PHASES,
        "optional": [(v, label, v in counted) for v, label in Alarm.Outcome.choices
                     if v in stats.OPTIONAL],
        "include": ",".join(o for o in counted if o in stats.OPTIONAL),
        "left_out": left_out.count(), "months": request.GET.get("months", "")})


@permission_required("console.export_stats", raise_exception=True)
def export(request: HttpRequest, fmt: str) -> HttpResponse:
    since = _since(request)
    counted = stats.included(request.GET.getlist("include"))
    lifecycle.audit(request.user.get_username(), "stats.export", fmt, timezone.now(),
                    outcomes=list(counted))
    if fmt == "csv":
        body = stats.to_csv(stats.table(request.GET.get("by", "village"), since, counted))
        response = HttpResponse("\ufeff" + body, content_type="text/csv; charset=utf-8")
    else:
        sheets = {by: stats.table(by, since, counted) for by in ("village", "station", "month")}
        response = HttpResponse(
            stats.to_xlsx(sheets),
            content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    response["Content-Disposition"] = f'attachment; filename="pingan-stats.{fmt}"'
    return response


@login_required
def handover(request: HttpRequest) -> HttpResponse:
    given_hours = request.GET.get("hours", "")
    hours = int(given_hours) if given_hours.isdigit() else 12
    since = timezone.now() - timedelta(hours=hours)
    given = parse_datetime(request.GET.get("since", ""))
    if given is not None:
        since = given
    changed = (Transition.objects.filter(at__gte=since).select_related("alarm__station")
               .order_by("at"))
    now = timezone.now()
    down = [st for st in Station.objects.all() if health(st, now) != "online" or st.problems]
    return render(request, "console/handover.html", {
        "alarms": open_alarms(), "changed": changed, "since": since, "hours": hours,
        "stations_down": down, "page": "handover",
        "raised": Alarm.objects.filter(raised_at__gte=since).count(),
        "resolved": Alarm.objects.filter(resolved_at__gte=since).count()})


@permission_required("console.view_quarantine", raise_exception=True)
def quarantine(request: HttpRequest) -> HttpResponse:
    rows = list(Quarantined.objects.all()[:500])
    for q in rows:
        q.preview = bytes(q.head[:400]).decode("utf-8", "replace")  # type: ignore[attr-defined]
    return render(request, "console/quarantine.html", {"rows": rows, "page": "quarantine",
                                                       "total": Quarantined.objects.count()})


@permission_required("console.view_auditentry", raise_exception=True)
def audit_log(request: HttpRequest) -> HttpResponse:
    q = request.GET.get("q", "")
    rows = AuditEntry.objects.all()
    if q:
        rows = rows.filter(Q(user__icontains=q) | Q(action__icontains=q) | Q(target=q))
    return render(request, "console/audit.html", {"rows": rows[:500], "q": q,
                                                  "page": "audit"})
