"""The monthly report (report.py) as a printable page and as XLSX, in the reader's
language. Anyone logged in may read it; the XLSX, like the statistics' export, needs
`export_stats` and is audited."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from pingan_centre.console import lifecycle, report, stats


def _report(request: HttpRequest) -> report.Report:
    now = timezone.now()
    first = report.parse_month(request.GET.get("month", ""), now)
    return report.build(first, now, stats.included(request.GET.getlist("include")))


@login_required
def monthly(request: HttpRequest) -> HttpResponse:
    rep = _report(request)
    include = ",".join(o for o in rep.counted if o in stats.OPTIONAL)
    months = report.months(timezone.now())
    if rep.month not in months:  # an older month asked for by its address
        months.append(rep.month)
    return render(request, "console/report.html", {
        "report": rep, "page": "report", "months": months,
        "include": include, "generated": timezone.now()})


@permission_required("console.export_stats", raise_exception=True)
def xlsx(request: HttpRequest) -> HttpResponse:
    rep = _report(request)
    lifecycle.audit(request.user.get_username(), "report.export", rep.month, timezone.now(),
                    outcomes=list(rep.counted))
    response = HttpResponse(
        report.to_xlsx(rep),
        content_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    response["Content-Disposition"] = (
        f'attachment; filename="pingan-report-{rep.township}-{rep.month}.xlsx"')
    return response
