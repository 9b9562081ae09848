"""The releases page: every station's version and last update result, and staged
rollouts (rollout.py). Starting and advancing need `change_station` (technicians and
admins); both are audited, refusals too."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from pingan_centre.console import rollout, runtime
from pingan_centre.console.lifecycle import NotAllowed


@login_required
def releases(request: HttpRequest) -> HttpResponse:
    return render(request, "console/releases.html", {
        "stations": rollout.station_versions(), "rollouts": rollout.rollouts(),
        "page": "releases"})


@require_POST
@permission_required("console.change_station", raise_exception=True)
def start(request: HttpRequest) -> HttpResponse:
    try:
        rollout_id = rollout.start(request.POST.get("descriptor", ""),
                                   request.POST.get("url", "").strip(),
                                   request.POST.getlist("canary"),
                                   request.user.get_username(), timezone.now(),
                                   runtime.of(request))
    except rollout.BadDescriptor as exc:
        return HttpResponseBadRequest(_("Bad release descriptor: %(error)s") % {"error": exc})
    except NotAllowed as exc:
        return HttpResponseForbidden(str(exc))
    return redirect(f"/releases#ro-{rollout_id}")


@require_POST
@permission_required("console.change_station", raise_exception=True)
def advance(request: HttpRequest, rollout_id: str) -> HttpResponse:
    try:
        rollout.advance(rollout_id, request.user.get_username(), timezone.now(),
                        runtime.of(request))
    except NotAllowed as exc:
        return HttpResponseForbidden(_("Halted or not ready: %(error)s") % {"error": exc})
    return redirect(f"/releases#ro-{rollout_id}")
