"""The clip library page (音频库, issue 23 item 4): upload a recording, send it to stations
with a progress bar each (refreshed live from `clips/progress`), see what each station
holds, delete a clip from a station. Uploading, sending and deleting need
`add_broadcast` (duty officers, leaders, admins) and are audited (cliplib.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from pingan_centre.console import broadcast, cliplib, runtime
from pingan_centre.console.models import Clip, Station, StationGroup


def _stations() -> list[Station]:
    return list(Station.objects.order_by("village", "name"))


def _page(request: HttpRequest, error: str = "", status: int = 200) -> HttpResponse:
    stations = _stations()
    return render(request, "console/clips.html", {
        "page": "clips", "library": cliplib.library(stations), "stations": stations,
        "villages": sorted({s.village for s in stations if s.village}),
        "groups": list(StationGroup.objects.all()), "error": error,
        "max_mib": cliplib.MAX_BYTES >> 20, "max_clips": cliplib.MAX_CLIPS}, status=status)


@login_required
def clips(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _chosen(request: HttpRequest) -> list[Station]:
    post = request.POST
    target = post.get("target", "all")
    chosen = {"station": [post.get("station", "")], "stations": post.getlist("stations"),
              "group": [post.get("group", "")], "village": [post.get("village", "")]}
    _stored, stations = broadcast.targets(target, chosen.get(target, []))
    return stations


def _clip(request: HttpRequest) -> Clip:
    found = Clip.objects.defer("data").filter(
        pk=request.POST.get("clip") or request.GET.get("id", "")).first()
    if found is None:
        raise Http404("no such clip")
    return found


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def upload(request: HttpRequest) -> HttpResponse:
    """Check and keep the recording, then send it to the chosen stations (none: kept at
    the centre only)."""
    file = request.FILES.get("file")
    now, by = timezone.now(), request.user.get_username()
    if file is not None and file.size is not None and file.size > cliplib.MAX_BYTES:
        return _page(request, cliplib.too_big(file.size), 400)  # not read into memory
    try:
        clip = cliplib.add(file.read() if file else b"", name=request.POST.get("name", ""),
                           filename=(file.name or "") if file else "",
                           content_type=(file.content_type or "") if file else "",
                           by=by, now=now)
        stations = _chosen(request) if request.POST.get("target", "none") != "none" else []
    except (cliplib.BadClip, broadcast.BadBroadcast) as exc:
        return _page(request, str(exc), 400)
    if stations:
        cliplib.distribute(clip, stations, by=by, now=now, effects=runtime.of(request))
    return _sent(request, clip, stations)


def _sent(request: HttpRequest, clip: Clip, stations: list[Station]) -> HttpResponse:
    """The answer to an upload, a send or a delete: JSON for scripts, else the clip's row."""
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": clip.id, "stations": [s.name for s in stations]})
    return redirect(f"/clips#clip-{clip.id}")


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def send(request: HttpRequest) -> HttpResponse:
    clip = _clip(request)
    try:
        stations = _chosen(request)
    except broadcast.BadBroadcast as exc:
        return _page(request, str(exc), 400)
    cliplib.distribute(clip, stations, by=request.user.get_username(), now=timezone.now(),
                       effects=runtime.of(request))
    return _sent(request, clip, stations)


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def delete(request: HttpRequest) -> HttpResponse:
    """`clip.delete` to one station (or the chosen ones)."""
    clip = _clip(request)
    names = request.POST.getlist("station")
    stations = list(Station.objects.filter(name__in=names))
    cliplib.delete(clip, stations, by=request.user.get_username(), now=timezone.now(),
                   effects=runtime.of(request))
    return _sent(request, clip, stations)


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def remove(request: HttpRequest) -> HttpResponse:
    """Take the recording out of the centre's library (none of it left at any station)."""
    clip = _clip(request)
    try:
        cliplib.remove(clip, _stations(), by=request.user.get_username(), now=timezone.now())
    except cliplib.BadClip as exc:
        return _page(request, str(exc), 400)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse({"id": clip.id, "removed": True})
    return redirect("/clips")


@login_required
def progress(request: HttpRequest) -> JsonResponse:
    """Each clip's copies, as the page shows them (the page asks every second)."""
    out: list[dict[str, Any]] = []
    for clip, rows in cliplib.library(_stations()):
        out.append({"id": clip.id, "chunks": clip.chunks, "stations": [
            {"station": h.station, "status": h.status, "label": h.label, "acked": h.acked,
             "chunks": h.chunks, "online": h.online, "percent": h.percent,
             "text": h.text, "error": h.error} for h in rows]})
    return JsonResponse({"clips": out})


@login_required
def audio(request: HttpRequest) -> HttpResponse:
    """The recording, to listen to in the browser."""
    clip = _clip(request)
    data = cliplib._data(clip.id)
    return HttpResponse(data, content_type=clip.content_type or "application/octet-stream")
