"""The CAP page (issue 23 item 6): upload a CAP 1.2 message, see what every imported
message did (uploaded or dropped into the watched folder) and why, and the villages'
GB/T 2260 codes the alerts are matched against. Importing needs `add_broadcast` (it
sends broadcasts); every import is audited (cap/imports.py)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_POST

from pingan_centre.console import runtime
from pingan_centre.console.cap.imports import MSG_TYPE, STATUS, take
from pingan_centre.console.models import CapImport
from pingan_centre.console.words import shown


def _page(request: HttpRequest, result: CapImport | None = None,
          status: int = 200) -> HttpResponse:
    cfg = settings.CENTRE.cap
    imports = list(CapImport.objects.defer("xml").select_related("broadcast")[:50])
    for row in [*imports, *([result] if result else [])]:
        row.reason_shown = shown(row.reason)  # type: ignore[attr-defined]
        row.status_shown = STATUS.get(row.status, row.status)  # type: ignore[attr-defined]
        row.type_shown = MSG_TYPE.get(row.msg_type, row.msg_type)  # type: ignore[attr-defined]
    return render(request, "console/cap.html", {
        "page": "cap", "imports": imports, "result": result,
        "areas": sorted(cfg.areas.items()), "allow_drills": cfg.allow_drills,
        "watch_dir": cfg.watch_dir}, status=status)


@login_required
def cap(request: HttpRequest) -> HttpResponse:
    return _page(request)


@require_POST
@permission_required("console.add_broadcast", raise_exception=True)
def cap_import(request: HttpRequest) -> HttpResponse:
    cfg = settings.CENTRE.cap
    upload = request.FILES.get("cap")
    if upload is not None:
        data, name = upload.read(cfg.max_bytes + 1), upload.name or ""
    else:
        data, name = request.POST.get("xml", "").encode("utf-8"), ""
    row = take(data, source=name, by=request.user.get_username(), now=timezone.now(),
               cfg=cfg, effects=runtime.of(request))
    status = 400 if row.outcome == CapImport.Outcome.REJECTED else 200
    if "application/json" in request.headers.get("Accept", ""):
        body: dict[str, Any] = {
            "id": row.pk, "outcome": row.outcome, "reason": shown(row.reason),
            "reason_zh": shown(row.reason, "zh-hans"), "reason_en": shown(row.reason, "en"),
            "detail": row.detail, "broadcast": row.broadcast_id or "", "drill": row.drill,
            "stopped": row.stopped}
        return JsonResponse(body, status=status)
    return _page(request, row, status)
