"""The station page: its newest health and the last 7 days of it as small charts."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone

from pingan_centre.console import telemetry
from pingan_centre.console.models import Station


@login_required
def station_detail(request: HttpRequest) -> HttpResponse:
    # The id in the query string: every stored id has a working URL, whatever it holds
    # (ids stored before ingest checked the patterns may contain "/" or a newline).
    station = get_object_or_404(Station, pk=request.GET.get("id", ""))
    telemetry.annotate([station])
    return render(request, "console/station.html", {
        "station": station, "page": "stations",
        "charts": telemetry.charts(station, timezone.now())})
