"""The five roles as Django groups, and what each may do."""

from __future__ import annotations

from typing import Any

ALARM_PERMS = ["ack_alarm", "dispatch_alarm", "resolve_alarm", "shelve_alarm"]

ROLES: dict[str, list[str]] = {
    "viewer": [],
    "duty_officer": ALARM_PERMS,
    "leader": [*ALARM_PERMS, "reopen_alarm", "export_stats", "view_quarantine"],
    "technician": ["view_quarantine", "change_station", "view_station"],
    "admin": [*ALARM_PERMS, "reopen_alarm", "export_stats", "view_quarantine",
              "change_station", "view_station", "view_auditentry"],
}


def ensure_groups(apps: Any = None) -> None:
    """Create or refresh the groups (also run by a data migration)."""
    if apps is None:
        from django.contrib.auth.models import Group, Permission
    else:
        Group = apps.get_model("auth", "Group")  # noqa: N806
        Permission = apps.get_model("auth", "Permission")  # noqa: N806
    for role, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = Permission.objects.filter(content_type__app_label="console",
                                          codename__in=codenames)
        group.permissions.set(perms)
