"""The schedules pages (issue 23): the township's recurring broadcasts as readable rules,
where each station differs from them, and pushing again. Saving and pushing need
`add_schedule` (duty officers, leaders, admins), deleting `delete_schedule`; all are
audited (schedule.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from pingan_centre.console import broadcast, runtime
from pingan_centre.console import schedule as schedules
from pingan_centre.console.lifecycle import NotAllowed
from pingan_centre.console.models import Schedule, Station, StationGroup


def _form(s: Schedule | None) -> dict[str, Any]:
    stations = list(Station.objects.order_by("village", "name"))
    rule = schedules.rule_of(s.cron) if s is not None else schedules.Rule("daily", "07:00")
    return {"stations": stations, "villages": sorted({x.village for x in stations
                                                      if x.village}),
            "groups": list(StationGroup.objects.all()), "tones": broadcast.TONES,
            "rule": rule, "week": [(d, schedules.DAY_NAMES[d]) for d in schedules.WEEK],
            "s": s}


@login_required
def index(request: HttpRequest) -> HttpResponse:
    kept = list(Schedule.objects.defer("clip"))
    for s in kept:
        rows = schedules.sync(s)
        s.rule_text = schedules.describe(s.cron)  # type: ignore[attr-defined]
        s.sync_text = schedules.in_sync_count(rows)  # type: ignore[attr-defined]
    return render(request, "console/schedules.html", {
        "page": "schedules", "schedules": kept, "drift": schedules.drift(),
        **_form(None)})


def _get(request: HttpRequest) -> Schedule:
    found = Schedule.objects.filter(pk=request.GET.get("id", "")).first()
    if found is None:
        raise Http404("no such schedule")
    return found


@login_required
def detail(request: HttpRequest) -> HttpResponse:
    s = _get(request)
    rows = schedules.sync(s)
    return render(request, "console/schedule_detail.html", {
        "page": "schedules", "rows": rows, "summary": schedules.in_sync_count(rows),
        "rule_text": schedules.describe(s.cron),
        "differ": sum(r.status != "in_sync" for r in rows), **_form(s)})


@login_required
def status(request: HttpRequest) -> JsonResponse:
    """One schedule's stations (the page redraws its table from `html` every 3 s), and
    the same as data: in sync or how each differs, and its last push."""
    s = _get(request)
    rows = schedules.sync(s)
    summary = schedules.in_sync_count(rows)
    html = render_to_string("console/schedule_rows.html", {"rows": rows, "summary": summary},
                            request=request)
    return JsonResponse({"id": s.id, "cron": s.cron, "rule": schedules.describe(s.cron),
                         "summary": summary, "html": html,
                         "rows": [{"station": r.station, "status": r.status,
                                   "push": r.push, "code": r.code} for r in rows]})


@require_POST
@permission_required("console.add_schedule", raise_exception=True)
def save(request: HttpRequest) -> HttpResponse:
    post = request.POST
    upload = request.FILES.get("clip")
    try:
        volume_text = post.get("volume", "").strip()
        target = post.get("target", "all")
        chosen = {"station": [post.get("station", "")], "stations": post.getlist("stations"),
                  "group": [post.get("group", "")], "village": [post.get("village", "")]}
        if upload is not None and upload.size is not None and (
                upload.size > broadcast.CLIP_MAX_BYTES):
            raise schedules.BadSchedule(_("the clip is over %(n)d MiB") % {
                "n": broadcast.CLIP_MAX_BYTES >> 20})
        sid = schedules.save(
            name=post.get("name", ""), rule=post.get("rule", ""), time=post.get("time", ""),
            days=post.getlist("days"), cron=post.get("cron", ""),
            content=post.get("content", ""), text=post.get("text", ""),
            tone=post.get("tone", ""), clip=upload.read() if upload else b"",
            clip_name=(upload.name or "") if upload else "",
            clip_type=(upload.content_type or "") if upload else "",
            repeat=int(post.get("repeat", "1") or 1),
            volume=float(volume_text) / 100 if volume_text else None,
            target=target, chosen=chosen.get(target, []), schedule_id=post.get("id", ""),
            by=request.user.get_username(), now=timezone.now(), effects=runtime.of(request))
    except (schedules.BadSchedule, ValueError) as exc:
        return HttpResponseBadRequest(_("Schedule not saved: %(error)s") % {"error": exc})
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": sid})
    return redirect(f"/schedule?id={sid}")


@require_POST
@permission_required("console.add_schedule", raise_exception=True)
def push(request: HttpRequest) -> HttpResponse:
    """Push again: one schedule to its stations that differ (`id`), or one station's
    every difference (`station`)."""
    sid, station = request.POST.get("id", ""), request.POST.get("station", "")
    try:
        sent = schedules.push_again(schedule_id=sid, station=station if not sid else "",
                                    by=request.user.get_username(), now=timezone.now(),
                                    effects=runtime.of(request))
    except NotAllowed as exc:
        return HttpResponseForbidden(str(exc))
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"sent": sent})
    return redirect(f"/schedule?id={sid}" if sid else "/schedules#drift")


@require_POST
@permission_required("console.delete_schedule", raise_exception=True)
def delete(request: HttpRequest) -> HttpResponse:
    try:
        schedules.delete(request.POST.get("id", ""), request.user.get_username(),
                         timezone.now(), runtime.of(request))
    except NotAllowed as exc:
        return HttpResponseForbidden(str(exc))
    return redirect("/schedules")
