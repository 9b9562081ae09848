"""The broadcasts pages (issue 23): compose and send, saved groups of stations, and each
broadcast's per-station results, refreshed live. Sending and stopping need
`add_broadcast` (duty officers, leaders, admins), groups `add_stationgroup`; both are
audited (broadcast.py)."""

from __future__ import annotations

from datetime import datetime

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
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from pingan_centre.console import broadcast, runtime
from pingan_centre.console.lifecycle import NotAllowed, audit
from pingan_centre.console.models import Broadcast, Clip, Station, StationGroup


@login_required
def broadcasts(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    recent = list(Broadcast.objects.defer("clip")[:20])
    for b in recent:
        b.summary = broadcast.summary(broadcast.results(b, now))  # type: ignore[attr-defined]
    stations = list(Station.objects.order_by("village", "name"))
    return render(request, "console/broadcast.html", {
        "page": "broadcasts", "broadcasts": recent, "stations": stations,
        "villages": sorted({s.village for s in stations if s.village}),
        "groups": list(StationGroup.objects.prefetch_related("stations")),
        "library": list(Clip.objects.defer("data")),
        "tones": broadcast.TONES})


def _when(text: str) -> datetime | None:
    """A datetime-local field (the centre's time zone), or None when left empty."""
    if not text.strip():
        return None
    parsed = parse_datetime(text.strip())
    if parsed is None:
        raise broadcast.BadBroadcast(_("not a date and time: %(text)s") % {"text": text})
    return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def send(request: HttpRequest) -> HttpResponse:
    post = request.POST
    upload = request.FILES.get("clip")
    try:
        volume_text = post.get("volume", "").strip()
        target = post.get("target", "all")
        chosen = {"station": [post.get("station", "")], "stations": post.getlist("stations"),
                  "group": [post.get("group", "")], "village": [post.get("village", "")]}
        if upload is not None and upload.size is not None and (
                upload.size > broadcast.CLIP_MAX_BYTES):
            raise broadcast.BadBroadcast(_("the clip is over %(n)d MiB") % {
                "n": broadcast.CLIP_MAX_BYTES >> 20})
        bid = broadcast.send(
            content=post.get("content", ""), text=post.get("text", ""),
            tone=post.get("tone", ""), clip=upload.read() if upload else b"",
            clip_name=(upload.name or "") if upload else "",
            clip_type=(upload.content_type or "") if upload else "",
            library_clip=post.get("library_clip", ""),
            repeat=int(post.get("repeat", "1") or 1),
            volume=float(volume_text) / 100 if volume_text else None,
            priority=post.get("priority", "normal"), not_before=_when(post.get(
                "not_before", "")), expires=_when(post.get("expires", "")),
            target=target, chosen=chosen.get(target, []), by=request.user.get_username(),
            now=timezone.now(), effects=runtime.of(request))
    except (broadcast.BadBroadcast, ValueError) as exc:
        return HttpResponseBadRequest(_("Broadcast not sent: %(error)s") % {"error": exc})
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": bid})
    return redirect(f"/broadcast?id={bid}")


def _get(request: HttpRequest) -> Broadcast:
    found = Broadcast.objects.filter(pk=request.GET.get("id", "")).first()
    if found is None:
        raise Http404("no such broadcast")
    return found


@login_required
def detail(request: HttpRequest) -> HttpResponse:
    b = _get(request)
    rows = broadcast.results(b, timezone.now())
    return render(request, "console/broadcast_detail.html", {
        "page": "broadcasts", "b": b, "rows": rows, "summary": broadcast.summary(rows)})


@login_required
def results(request: HttpRequest) -> JsonResponse:
    """The results table and summary as the page shows them (the page asks every 2 s),
    and the rows as data."""
    b = _get(request)
    rows = broadcast.results(b, timezone.now())
    summary = broadcast.summary(rows)
    html = render_to_string("console/broadcast_results.html", {
        "b": b, "rows": rows, "summary": summary}, request=request)
    return JsonResponse({"id": b.id, "summary": summary, "html": html,
                         "stopped": b.stopped_at is not None,
                         "rows": [{"station": r.station, "result": r.result, "code": r.code,
                                   "steps": r.steps, "played": r.played} for r in rows]})


@login_required
def clip(request: HttpRequest) -> HttpResponse:
    """The uploaded clip as sent, to listen to in the browser."""
    b = _get(request)
    if not b.clip:
        raise Http404("no clip")
    return HttpResponse(bytes(b.clip), content_type=b.clip_type or "application/octet-stream")


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def stop(request: HttpRequest) -> HttpResponse:
    bid = request.POST.get("id", "")
    try:
        broadcast.stop(bid, request.user.get_username(), timezone.now(), runtime.of(request))
    except NotAllowed as exc:
        return HttpResponseForbidden(str(exc))
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": bid, "stopped": True})
    return redirect(f"/broadcast?id={bid}")


@require_POST
@permission_required("console.add_stationgroup", raise_exception=True)
def group_save(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "").strip()[:100]
    names = request.POST.getlist("stations")
    if not name:
        return HttpResponseBadRequest(_("a group needs a name"))
    stations = list(Station.objects.filter(name__in=names))
    group, _created = StationGroup.objects.get_or_create(name=name)
    group.stations.set(stations)
    audit(request.user.get_username(), "group.save", f"group:{name}", timezone.now(),
          stations=sorted(s.name for s in stations))
    return redirect("/broadcasts#groups")


@require_POST
@permission_required("console.delete_stationgroup", raise_exception=True)
def group_delete(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "")
    StationGroup.objects.filter(name=name).delete()
    audit(request.user.get_username(), "group.delete", f"group:{name}", timezone.now())
    return redirect("/broadcasts#groups")
