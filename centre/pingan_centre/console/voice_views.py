"""The live voice page (喊话, issue 23): hold the button and speak to the chosen stations;
each station's loudspeaker report below, refreshed every second. The speech itself goes
over the page's WebSocket (console/voice.py); speaking needs `add_broadcast`."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string

from pingan_centre.console import voice
from pingan_centre.console.models import Station, StationGroup


@login_required
def page(request: HttpRequest) -> HttpResponse:
    stations = list(Station.objects.order_by("village", "name"))
    return render(request, "console/voice.html", {
        "page": "voice", "stations": stations,
        "villages": sorted({s.village for s in stations if s.village}),
        "groups": list(StationGroup.objects.all())})


@login_required
def results(request: HttpRequest) -> JsonResponse:
    """One session's per-station table as the page shows it, and the rows as data."""
    session = request.GET.get("session", "")[:64]
    rows = voice.results(session)
    html = render_to_string("console/voice_results.html", {"rows": rows, "session": session},
                            request=request)
    return JsonResponse({"session": session, "html": html, "rows": [
        {"station": r.station, "result": r.result, "steps": r.steps,
         "underruns": r.underruns, "lost": r.lost, "dropped_ms": r.dropped_ms,
         "played_s": r.played_s, "delay_ms_p50": r.delay_ms_p50,
         "delay_ms_p95": r.delay_ms_p95} for r in rows]})
