"""The on-duty rota (值班表): who is on duty when, at which phone. The escalation ladder's
`sms` notifier texts whoever's shift covers the moment a rung fires (console/sms.py).

Everyone logged in sees it; leaders and admins (the `add_dutyshift` / `delete_dutyshift`
permissions, roles.py) add and remove shifts. Each change is in the audit log."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from pingan_centre.console.lifecycle import audit
from pingan_centre.console.models import DutyShift

# A mobile number as pdu.encode_number takes it: optional +, 5-20 digits.
_PHONE = re.compile(r"\+?\d{5,20}")
_SHOWN = timedelta(days=14)  # past shifts shown; the future ones all
_LONGEST = timedelta(days=31)


class ShiftForm(forms.ModelForm):  # type: ignore[type-arg]
    starts = forms.DateTimeField(label=_("starts"), widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))
    ends = forms.DateTimeField(label=_("ends"), widget=forms.DateTimeInput(
        attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))

    class Meta:
        model = DutyShift
        fields = ["name", "phone", "role", "starts", "ends"]

    def clean_phone(self) -> str:
        phone = "".join(str(self.cleaned_data["phone"]).split()).replace("-", "")
        if not _PHONE.fullmatch(phone):
            raise forms.ValidationError(_("a mobile number: digits, optionally starting "
                                          "with +, e.g. 13800138000 or +8613800138000"))
        return phone

    def clean(self) -> dict[str, Any] | None:
        data = super().clean()
        starts, ends = (data or {}).get("starts"), (data or {}).get("ends")
        if starts and ends:
            if ends <= starts:
                raise forms.ValidationError(_("the shift must end after it starts"))
            if ends - starts > _LONGEST:
                raise forms.ValidationError(_("a shift is at most 31 days"))
        return data


@login_required
def rota(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    can_edit = request.user.has_perm("console.add_dutyshift")
    form = ShiftForm()
    if request.method == "POST":
        if not can_edit:
            return HttpResponseForbidden(_("You may not change the duty rota."))
        form = ShiftForm(request.POST)
        if form.is_valid():
            shift = form.save(commit=False)
            shift.created_by = request.user.get_username()
            shift.save()
            audit(shift.created_by, "rota.add", f"shift:{shift.pk}", now, name=shift.name,
                  phone=shift.phone, role=shift.role, starts=shift.starts.isoformat(),
                  ends=shift.ends.isoformat())
            return redirect("rota")
    shifts = list(DutyShift.objects.filter(ends__gt=now - _SHOWN).order_by("starts", "id"))
    for shift in shifts:
        shift.current = shift.starts <= now < shift.ends  # type: ignore[attr-defined]
    on_duty = [s for s in shifts if s.current]  # type: ignore[attr-defined]
    return render(request, "console/rota.html", {
        "shifts": shifts, "on_duty": on_duty, "form": form, "can_edit": can_edit,
        "page": "rota"}, status=400 if form.errors else 200)


@login_required
@require_POST
def rota_delete(request: HttpRequest, shift_id: int) -> HttpResponse:
    if not request.user.has_perm("console.delete_dutyshift"):
        return HttpResponseForbidden(_("You may not change the duty rota."))
    shift = get_object_or_404(DutyShift, pk=shift_id)
    audit(request.user.get_username(), "rota.delete", f"shift:{shift.pk}", timezone.now(),
          name=shift.name, phone=shift.phone)
    shift.delete()
    return redirect("rota")
