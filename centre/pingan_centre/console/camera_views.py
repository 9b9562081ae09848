"""The cameras from the console (issue 23, item 8): each station's camera state and the
snapshots it sent (`camera.person` events), and arm/disarm for chosen stations, a
village or all. The station side is edge/camera: `camera.arm` / `camera.disarm`
(edge.contract.commands), answered with a cmd.result whose detail says `armed`.

Arming and disarming need `change_station` (technicians and admins, as for releases)
and are audited; each command is a Command row, sent once its transaction commits
(the path lifecycle.send_ack and rollout take), its result shown when it comes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import get_language
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from pingan_centre import topics
from pingan_centre.console import runtime
from pingan_centre.console.lifecycle import audit
from pingan_centre.console.link import Effects
from pingan_centre.console.models import Command, Event, Station
from pingan_centre.console.store import snapshot_bytes

CAMERA_CMDS = ("camera.arm", "camera.disarm")
PER_PAGE = 24
MAX_HOURS = 7 * 24  # edge.contract.commands.CameraArm.for_s: at most 7 days


def send(stations: list[Station], armed: bool, for_s: float, by: str, now: datetime,
         effects: Effects) -> list[str]:
    """One camera.arm / camera.disarm per station, audited together; their ids."""
    cmd = "camera.arm" if armed else "camera.disarm"
    ids = []
    with transaction.atomic():
        for st in stations:
            cmd_id = f"cam-{uuid.uuid4().hex[:20]}"
            payload: dict[str, Any] = {"cmd": cmd, "id": cmd_id, "by": by[:64],
                                       "for_s": for_s}
            Command.objects.create(id=cmd_id, station=st, cmd=cmd, payload=payload, by=by,
                                   created_at=now)
            topic = topics.station_topic("cmd", st.township, st.name)

            def publish(topic: str = topic, payload: dict[str, Any] = payload,
                        cmd_id: str = cmd_id) -> None:
                if effects.send(topic, payload):
                    Command.objects.filter(pk=cmd_id).update(sent=True)

            transaction.on_commit(publish)
            ids.append(cmd_id)
        audit(by, cmd, ",".join(st.name for st in stations)[:120], now,
              stations=[st.name for st in stations], for_s=for_s, commands=ids)
    return ids


def outcome(command: Command) -> dict[str, Any]:
    """What a camera command came to, for the page: waiting, armed / disarmed, or the
    station's refusal in the reader's language."""
    if command.result is None:
        return {"state": "sent" if command.sent else "not_sent", "text": (
            _("waiting for the station") if command.sent else _("not sent yet"))}
    if command.result_ok:
        armed = (command.result.get("detail") or {}).get("armed")
        return {"state": "ok", "text": _("armed") if armed else _("disarmed")}
    error = command.result.get("error") or {}
    message = error.get("message") or {}
    lang = "en" if (get_language() or "").startswith("en") else "zh"
    return {"state": "refused", "code": error.get("code", ""),
            "text": message.get(lang) or message.get("zh") or _("refused")}


@login_required
def cameras(request: HttpRequest) -> HttpResponse:
    """Every station's camera (or one station's gallery, `?id=`)."""
    if "id" in request.GET:
        return gallery(request, request.GET["id"])
    stations = list(Station.objects.all())
    last: dict[str, Command] = {}
    for c in Command.objects.filter(cmd__in=CAMERA_CMDS).order_by("created_at"):
        last[c.station_id] = c
    latest: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for station_id, received in (Event.objects.filter(type="camera.person")
                                 .order_by("received_at")
                                 .values_list("station_id", "received_at")):
        latest[station_id] = received
        counts[station_id] = counts.get(station_id, 0) + 1
    for st in stations:
        cmd = last.get(st.name)
        st.camera_cmd = cmd  # type: ignore[attr-defined]
        st.camera_outcome = outcome(cmd) if cmd else None  # type: ignore[attr-defined]
        st.snapshots = counts.get(st.name, 0)  # type: ignore[attr-defined]
        st.last_person = latest.get(st.name)  # type: ignore[attr-defined]
    recent = list(Command.objects.filter(cmd__in=CAMERA_CMDS).order_by("-created_at")[:50])
    for c in recent:
        c.outcome = outcome(c)  # type: ignore[attr-defined]
    return render(request, "console/gallery.html", {
        "stations": stations, "recent": recent, "page": "cameras",
        "villages": sorted({st.village for st in stations if st.village}),
        "one": None})


def gallery(request: HttpRequest, station_id: str) -> HttpResponse:
    station = get_object_or_404(Station, pk=station_id)
    events = Event.objects.filter(station=station, type="camera.person").order_by(
        "-received_at")
    page = Paginator(events, PER_PAGE).get_page(request.GET.get("page"))
    commands = list(Command.objects.filter(station=station, cmd__in=CAMERA_CMDS)
                    .order_by("-created_at")[:20])
    for c in commands:
        c.outcome = outcome(c)  # type: ignore[attr-defined]
    return render(request, "console/gallery.html", {
        "one": station, "snapshots": page, "recent": commands, "page": "cameras"})


@login_required
def snapshot(request: HttpRequest) -> HttpResponse:
    """One camera.person picture, by its event id (in the query: any stored id works)."""
    event = get_object_or_404(Event, pk=request.GET.get("event", ""), type="camera.person")
    picture = snapshot_bytes(event)
    if not picture:
        return HttpResponse(status=404)
    return HttpResponse(picture, content_type="image/jpeg")


@require_POST
@permission_required("console.change_station", raise_exception=True)
def command(request: HttpRequest) -> HttpResponse:
    """Arm or disarm: the stations ticked, a village's, or all; for some hours, or (0)
    until the station's own schedule next changes."""
    post = request.POST
    action = post.get("action", "")
    if action not in ("arm", "disarm"):
        return HttpResponseBadRequest(_("choose arm or disarm"))
    hours_text = post.get("hours", "0").strip() or "0"
    try:
        hours = float(hours_text)
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= MAX_HOURS:
        return HttpResponseBadRequest(_("hours must be between 0 and %(max)d") % {
            "max": MAX_HOURS})
    query = Station.objects.none()
    if post.get("target") == "all":
        query = Station.objects.all()
    elif post.get("target") == "village" and post.get("village"):
        query = Station.objects.filter(village=post["village"])
    elif post.getlist("station"):
        query = Station.objects.filter(name__in=post.getlist("station"))
    stations = list(query.order_by("name"))
    if not stations:
        return HttpResponseBadRequest(_("choose at least one station"))
    ids = send(stations, action == "arm", hours * 3600, request.user.get_username(),
               timezone.now(), runtime.of(request))
    if request.headers.get("Accept") == "application/json":
        return JsonResponse({"commands": ids})
    back = post.get("next", "")
    return redirect(back if back.startswith("/camera") else "cameras")
