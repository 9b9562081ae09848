"""The admin: stations (village names) and users; history is shown, never editable."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from pingan_centre.console.models import (
    Alarm,
    AuditEntry,
    Quarantined,
    Station,
    Transition,
)


@admin.register(Station)
class StationAdmin(admin.ModelAdmin[Station]):
    list_display = ("name", "village", "online", "last_seen", "version")
    list_editable = ("village",)
    list_filter = ("village", "online")
    readonly_fields = ("online", "state_ts", "last_seen", "problems", "pending", "version",
                       "clock_synced", "last_selftest", "counters")


class ReadOnly(admin.ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditEntry)
class AuditAdmin(ReadOnly):
    list_display = ("at", "user", "action", "target")
    list_filter = ("action",)
    search_fields = ("user", "action", "target")


@admin.register(Transition)
class TransitionAdmin(ReadOnly):
    list_display = ("at", "alarm", "action", "from_state", "to_state", "by", "note")


@admin.register(Alarm)
class AlarmAdmin(ReadOnly):
    list_display = ("id", "station", "state", "outcome", "raised_at", "acked_at")
    list_filter = ("state", "outcome")


@admin.register(Quarantined)
class QuarantinedAdmin(ReadOnly):
    list_display = ("received_at", "topic", "size", "reason")
